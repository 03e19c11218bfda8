"""Cross-request batching and an LRU cache in front of a retriever (asyncio, Ray-free).

Runs on the event loop of the retrieval actor (``actors/retrieval.py``, an async Ray actor)
and of the HTTP server (``retrieval_service/http.py``). Concurrent ``search`` calls put their
cache misses on one queue; a single worker task takes up to ``max_batch_size`` of them,
waiting at most ``max_wait_ms`` for more after the first, and runs them as one retriever
call in a worker thread. While a batch runs, new arrivals queue up and form the next one,
so batches grow with load by themselves. Identical queries in flight share one search.
Results are cached on (normalized query, topk), bounded in entries and in (estimated) bytes.
With ``max_pending`` set, a request whose new queries would overfill the waiting work is
refused with ``SearcherBusyError`` (HTTP 503). Should the worker task ever stop, every
search waiting on it fails with ``SearcherStoppedError`` and the next call starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

import numpy as np

from retrieval_service.retriever import check_search_args
from workers.types import Document, SearchFn

logger = logging.getLogger(__name__)

CacheKey = tuple[str, int]

REQUESTS = "retrieval/requests"
QUERIES = "retrieval/queries"
CACHE_HITS = "retrieval/cache_hits"
CACHE_HIT_RATE = "retrieval/cache_hit_rate"
INFLIGHT_SHARED = "retrieval/inflight_shared"
BATCHES = "retrieval/batches"
BATCH_SIZE_MEAN = "retrieval/batch_size_mean"
BATCH_SIZE_MAX = "retrieval/batch_size_max"
SEARCH_MS_PER_QUERY = "retrieval/search_ms_per_query"
LATENCY_MS = "retrieval/latency_ms"
LATENCY_MS_P50 = "retrieval/latency_ms_p50"
LATENCY_MS_P90 = "retrieval/latency_ms_p90"
LATENCY_MS_P99 = "retrieval/latency_ms_p99"
ERRORS = "retrieval/errors"


class SearcherBusyError(RuntimeError):
    """Too many queries already wait for the retriever; retry later (HTTP 503)."""


class SearcherStoppedError(RuntimeError):
    """The batch worker task stopped (crashed or closed) while this search waited on it."""


def entry_bytes(key: CacheKey, docs: Sequence[Document]) -> int:
    """Estimated memory of one cache entry: its strings plus a fixed cost per object.

    >>> entry_bytes(("q", 3), [Document("d1", "T", "text")])
    328
    """
    per_doc = sum(len(d.id) + len(d.title) + len(d.text) + _DOC_OVERHEAD for d in docs)
    return len(key[0]) + _ENTRY_OVERHEAD + per_doc


_DOC_OVERHEAD = 200  # a Document, its three str headers and a float (CPython, 64-bit)
_ENTRY_OVERHEAD = 120  # the key tuple, the OrderedDict node and the value tuple


def normalize_query(query: str) -> str:
    """Cache key form of a query: Unicode NFC, whitespace runs folded, ends stripped.

    >>> normalize_query("  who   founded\\tIBM ")
    'who founded IBM'
    """
    return unicodedata.normalize("NFC", " ".join(query.split()))


@dataclass
class SearchStats:
    """Counters of one searcher (or several merged); latencies of the most recent requests."""

    requests: int = 0
    queries: int = 0
    cache_hits: int = 0
    inflight_shared: int = 0
    batches: int = 0
    searched: int = 0
    errors: int = 0
    search_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)

    @classmethod
    def merge(cls, parts: Sequence[SearchStats]) -> SearchStats:
        """Sum counters and pool the samples of several replicas."""
        out = cls()
        for part in parts:
            for f in fields(cls):
                setattr(out, f.name, getattr(out, f.name) + getattr(part, f.name))
        return out

    def metrics(self) -> dict[str, float]:
        """Flat metric dict with the ``retrieval/...`` keys of this module."""
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(lat, [50, 90, 99]) if lat.size else (0.0, 0.0, 0.0)
        return {
            REQUESTS: float(self.requests), QUERIES: float(self.queries),
            CACHE_HITS: float(self.cache_hits),
            CACHE_HIT_RATE: self.cache_hits / self.queries if self.queries else 0.0,
            INFLIGHT_SHARED: float(self.inflight_shared), BATCHES: float(self.batches),
            BATCH_SIZE_MEAN: float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0,
            BATCH_SIZE_MAX: float(max(self.batch_sizes, default=0)),
            SEARCH_MS_PER_QUERY: 1000.0 * self.search_seconds / self.searched if self.searched else 0.0,
            LATENCY_MS: float(lat.mean()) if lat.size else 0.0,
            LATENCY_MS_P50: float(p50), LATENCY_MS_P90: float(p90), LATENCY_MS_P99: float(p99),
            ERRORS: float(self.errors),
        }


class BatchingSearcher:
    """``await search(queries, topk)`` with coalescing and caching; one event loop at a time."""

    def __init__(self, search_fn: SearchFn, *, num_passages: int | None = None,
                 max_batch_size: int = 256, max_wait_ms: float = 2.0, cache_size: int = 100_000,
                 cache_max_bytes: int = 512 * 2**20, max_pending: int = 0,
                 sample_window: int = 10_000) -> None:
        self._search_fn = search_fn
        self._num_passages = num_passages
        self.max_batch_size = max_batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._cache_size = cache_size
        self._cache_max_bytes = cache_max_bytes
        self._cache_bytes = 0
        self.max_pending = max_pending
        self._cache: OrderedDict[CacheKey, tuple[Document, ...]] = OrderedDict()
        self._pending: dict[CacheKey, asyncio.Future] = {}
        self._queue: asyncio.Queue[CacheKey] | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieval-batch")
        self._stats = SearchStats()
        self._latencies: deque[float] = deque(maxlen=sample_window)
        self._batch_sizes: deque[int] = deque(maxlen=sample_window)

    async def search(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
        """Top-``topk`` documents per query; raises ``SearchInputError`` on bad arguments."""
        if self._num_passages is not None:
            check_search_args(queries, topk, self._num_passages)
        start = time.perf_counter()
        keys = [(normalize_query(q), int(topk)) for q in queries]
        found = {key: hit for key in set(keys) if (hit := self._cache_get(key)) is not None}
        misses = [key for key in dict.fromkeys(keys) if key not in found]
        self._admit(misses)
        futures = [self._submit(key) for key in misses]
        try:
            # shield: one caller giving up must not cancel a search other callers share
            results = await asyncio.gather(*(asyncio.shield(f) for f in futures))
        except Exception:
            self._stats.errors += 1
            raise
        found.update(zip(misses, results, strict=True))
        self._stats.requests += 1
        self._stats.queries += len(keys)
        self._stats.cache_hits += sum(1 for key in keys if key not in misses)
        self._latencies.append(1000.0 * (time.perf_counter() - start))
        return [list(found[key]) for key in keys]

    def stats(self) -> SearchStats:
        """A snapshot of the counters (safe to send across processes)."""
        snap = SearchStats(**{f.name: getattr(self._stats, f.name) for f in fields(SearchStats)})
        snap.latencies_ms, snap.batch_sizes = list(self._latencies), list(self._batch_sizes)
        return snap

    def metrics(self) -> dict[str, float]:
        return self.stats().metrics()

    @property
    def cache_bytes(self) -> int:
        """Estimated bytes the cache holds now (``entry_bytes`` summed)."""
        return self._cache_bytes

    @property
    def pending(self) -> int:
        """Distinct queries queued or being searched."""
        return len(self._pending)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0

    def reset_stats(self) -> None:
        self._stats = SearchStats()
        self._latencies.clear()
        self._batch_sizes.clear()

    def close(self) -> None:
        """Stop the worker task and thread (pending callers get cancelled)."""
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        """``close``, then wait for the worker task to end on its loop, so that no pending
        task is left for the loop to report when the process exits."""
        worker = self._worker
        self.close()
        if worker is not None and worker.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    def _cache_get(self, key: CacheKey) -> tuple[Document, ...] | None:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        return hit

    def _cache_put(self, key: CacheKey, docs: tuple[Document, ...]) -> None:
        size = entry_bytes(key, docs)
        if self._cache_size <= 0 or size > self._cache_max_bytes:
            return
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= entry_bytes(key, old)
        self._cache[key] = docs
        self._cache_bytes += size
        while len(self._cache) > self._cache_size or self._cache_bytes > self._cache_max_bytes:
            evicted, value = self._cache.popitem(last=False)
            self._cache_bytes -= entry_bytes(evicted, value)

    def _admit(self, misses: list[CacheKey]) -> None:
        """Refuse (``SearcherBusyError``) new work that would overfill the waiting queries.

        Queries already in flight join their search for free; with nothing waiting, any
        request is admitted, so a large request never waits forever for room.
        """
        if self.max_pending <= 0 or not self._pending:
            return
        new = sum(1 for key in misses if key not in self._pending)
        if new and len(self._pending) + new > self.max_pending:
            self._stats.errors += 1
            raise SearcherBusyError(f"{len(self._pending)} queries wait for the retriever; {new} more would "
                                    f"exceed the limit of {self.max_pending} (server.max_pending)")

    def _submit(self, key: CacheKey) -> asyncio.Future:
        """The future of ``key``'s search: an identical one in flight, or a newly queued one."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._worker is None or self._worker.done():
            # First call, a new loop (tests), or the worker stopped: start a fresh worker.
            self._loop, self._queue, self._pending = loop, asyncio.Queue(), {}
            self._worker = loop.create_task(self._run())
            # The callback gets this worker's own pending map: a worker started after it
            # stopped (before the callback ran) has a new one, and the old waiters still fail.
            self._worker.add_done_callback(functools.partial(self._worker_stopped, self._pending))
        if key in self._pending:
            self._stats.inflight_shared += 1
            return self._pending[key]
        future = loop.create_future()
        self._pending[key] = future
        assert self._queue is not None
        self._queue.put_nowait(key)
        return future

    async def _collect(self) -> list[CacheKey]:
        """Wait for one key, then take more until the batch is full or ``max_wait`` passed."""
        assert self._queue is not None and self._loop is not None
        batch = [await self._queue.get()]
        deadline = self._loop.time() + self._max_wait
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            try:
                await self._execute(batch)
            except Exception:  # never let the worker die: fail this batch, serve the next
                logger.exception("retrieval batch of %d failed", len(batch))
                self._fail(batch, RuntimeError("retrieval batch failed"))

    async def _execute(self, batch: list[CacheKey]) -> None:
        assert self._loop is not None
        # One call with the largest topk; smaller ones take a prefix of their ranking.
        topk = max(k for _, k in batch)
        start = time.perf_counter()
        try:
            results = await self._loop.run_in_executor(
                self._executor, self._search_fn, [q for q, _ in batch], topk)
        except Exception as exc:  # any retriever failure goes back to its callers
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            logger.warning("batch of %d failed (%s); retrying its queries one by one", len(batch), exc)
            for key in batch:
                await self._execute([key])
            return
        self._stats.search_seconds += time.perf_counter() - start
        self._stats.batches += 1
        self._stats.searched += len(batch)
        self._batch_sizes.append(len(batch))
        for key, docs in zip(batch, results, strict=True):
            value = tuple(docs[:key[1]])
            self._cache_put(key, value)
            future = self._pending.pop(key, None)
            if future is not None and not future.done():
                future.set_result(value)

    def _worker_stopped(self, pending: dict[CacheKey, asyncio.Future], task: asyncio.Task) -> None:
        """Fail every search still waiting on a worker that stopped, so none waits forever."""
        reason = "was cancelled" if task.cancelled() else f"died: {task.exception()!r}"
        if not task.cancelled():
            logger.error("retrieval batch worker %s", reason, exc_info=task.exception())
        waiting = [future for future in pending.values() if not future.done()]
        pending.clear()
        if waiting:
            self._stats.errors += 1
            error = SearcherStoppedError(f"the retrieval batch worker {reason}; "
                                         f"{len(waiting)} pending queries failed")
            for future in waiting:
                future.set_exception(error)

    def _fail(self, batch: list[CacheKey], exc: BaseException) -> None:
        for key in batch:
            future = self._pending.pop(key, None)
            if future is not None and not future.done():
                future.set_exception(exc)
