"""Retrieval on Ray: ``RetrievalActor`` hosts one retriever; ``RetrievalGroup`` fronts N of them.

``RetrievalActor`` runs in its own Ray actor process (CPU, or GPUs holding the sharded
index); it is an async actor, so concurrent callers (rollout workers, the driver) land on
one event loop where ``BatchingSearcher`` coalesces them into encoder batches and caches
results. ``RetrievalGroup`` lives in the driver and is passed to rollout actors: its
``search`` splits a batch over the replicas by a stable hash of each query (so a repeated
query always meets the cache that has it) and reassembles the results in order. With
``num_replicas=0`` it searches in-process without Ray (``actors.session.Session(in_process=True)``:
launch.evaluate and launch.ask on one machine).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from retrieval_service.batching import BatchingSearcher, SearchStats, normalize_query
from retrieval_service.encoders import encoder_threads
from retrieval_service.retriever import Retriever, build_retriever, check_search_args
from workers.config import RetrievalConfig
from workers.types import Document

logger = logging.getLogger(__name__)

_MAX_RESTARTS = 2
"""A crashed replica is restarted (index reloaded) this often; searches are idempotent, so
calls in flight are retried on the restarted replica."""


class RetrievalActor:
    """One retriever behind a batching, caching front; wrapped with ``ray.remote`` at launch."""

    def __init__(self, cfg: RetrievalConfig, device: str = "auto") -> None:
        import torch

        # Ray gives an actor OMP_NUM_THREADS = its num_cpus only when the variable is unset; an
        # inherited one (say the driver's) would win. The encoder uses what the config reserves.
        torch.set_num_threads(encoder_threads(cfg.num_cpus))
        self._retriever: Retriever = build_retriever(cfg, device)
        self._default_topk = cfg.topk
        self._searcher = BatchingSearcher(
            self._retriever.search, num_passages=self._retriever.num_passages,
            max_batch_size=cfg.max_batch_size, max_wait_ms=cfg.max_batch_wait_ms,
            cache_size=cfg.cache_size, cache_max_bytes=cfg.cache_max_bytes)
        self._callers: dict[str, int] = {}

    async def search(self, queries: list[str], topk: int | None = None,
                     caller_node: str = "") -> list[list[Document]]:
        """Top-k documents per query (``topk`` None: the configured default); ``caller_node``:
        the Ray node id of the caller, counted for ``callers`` (per-node routing checks)."""
        self._callers[caller_node] = self._callers.get(caller_node, 0) + 1
        return await self._searcher.search(queries, self._default_topk if topk is None else topk)

    async def close(self) -> None:
        """Stop the batching worker before the actor is killed (no pending task at exit)."""
        await self._searcher.aclose()

    def callers(self) -> dict[str, int]:
        """Search calls received per caller node id ('' for callers that did not say)."""
        return dict(self._callers)

    def info(self) -> dict[str, Any]:
        return self._retriever.info()

    def stats(self) -> SearchStats:
        return self._searcher.stats()

    def metrics(self) -> dict[str, float]:
        return self._searcher.metrics()

    def clear_cache(self) -> None:
        self._searcher.clear_cache()

    def reset_stats(self) -> None:
        self._searcher.reset_stats()

    def num_threads(self) -> int:
        """Intra-op threads the encoder runs with here (tests, benchmarks)."""
        import torch

        return torch.get_num_threads()

    def cpu_seconds(self) -> float:
        """CPU time this replica's process has used (benchmarks, capacity planning)."""
        return time.process_time()


def _replica_of(query: str, num_replicas: int) -> int:
    """Stable across processes (``hash`` is salted per process, crc32 is not)."""
    return zlib.crc32(normalize_query(query).encode("utf-8")) % num_replicas


class RetrievalGroup:
    """N ``RetrievalActor`` replicas behind one ``search``; picklable when N > 0.

    The replicas are named actors, and a pickled group carries their names, not their
    handles: a handle inside an actor's constructor arguments is an object-store reference
    that Ray could not restore when it restarts that actor (ray-project/ray#53727), so a
    rollout actor given ``group.search`` looks the replicas up by name when it first searches.
    """

    def __init__(self, cfg: RetrievalConfig, device: str = "auto", num_replicas: int | None = None,
                 name_prefix: str | None = None, placement: Sequence[Mapping[str, Any]] | None = None,
                 replica_nodes: Sequence[str] = ()) -> None:
        """``placement``: per replica, the Ray options of its planned node (``actors.placement``;
        their number is the replica count). ``replica_nodes``: each replica's node id; when
        given (``retrieval.replicas=per_node``), a caller on a node with a replica sends all its
        queries there, and only callers on other nodes spread them by query hash."""
        if placement is not None:
            num_replicas = len(placement)
        self.num_replicas = cfg.num_replicas if num_replicas is None else num_replicas
        self.replica_nodes = list(replica_nodes)
        self._here: str | None = None  # this process's node id, looked up once per process
        self.default_topk = cfg.topk
        self.timeout_s = cfg.search_timeout_s
        self._local: Retriever | None = None
        self._actors: list[Any] = []
        self._names: list[str] = []
        self._namespace: str | None = None
        if self.num_replicas == 0:
            self._local = build_retriever(cfg, device)
            return
        remote_cls = ray.remote(RetrievalActor)
        prefix = name_prefix or f"retrieval-{uuid.uuid4().hex[:12]}"
        self._namespace = ray.get_runtime_context().namespace
        for i in range(self.num_replicas):
            place = placement[i] if placement is not None else {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
            options: dict[str, Any] = {
                **place, "name": f"{prefix}-{i}",
                "max_restarts": _MAX_RESTARTS, "max_task_retries": _MAX_RESTARTS,
                "max_concurrency": max(1000, 4 * cfg.max_batch_size)}
            self._names.append(options["name"])
            self._actors.append(remote_cls.options(**options).remote(cfg, device))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._names:  # named replicas travel by name (see the class docstring)
            state["_actors"] = []
        state["_here"] = None  # the receiving process looks up its own node
        return state

    def _node(self) -> str:
        if self._here is None:
            self._here = ray.get_runtime_context().get_node_id()
        return self._here

    def _replicas(self) -> list[Any]:
        if not self._actors and self._names:
            self._actors = [ray.get_actor(name, namespace=self._namespace) for name in self._names]
        return self._actors

    @property
    def actors(self) -> list[Any]:
        return list(self._replicas())

    def wait_ready(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until every replica has loaded its index; return their ``info``."""
        if self._local is not None:
            return [self._local.info()]
        return ray.get([a.info.remote() for a in self._replicas()], timeout=timeout)

    def search_refs(self, queries: Sequence[str], topk: int | None = None) -> list[tuple[list[int], Any]]:
        """Submit without waiting: ``(positions in queries, ObjectRef of their results)`` per replica."""
        return [(positions, ref) for _, positions, ref in self._submit(queries, topk)]

    def _submit(self, queries: Sequence[str], topk: int | None) -> list[tuple[int, list[int], Any]]:
        """``(replica index, positions in queries, ObjectRef)`` per replica that got queries."""
        replicas = self._replicas()
        assert replicas, "search_refs needs Ray replicas (num_replicas > 0)"
        k = self.default_topk if topk is None else topk
        # Check here so errors name positions in the caller's list; replicas check topk bounds.
        check_search_args(queries, k, sys.maxsize)
        here = self._node()
        local = self.replica_nodes.index(here) if here in self.replica_nodes else None
        if len(replicas) == 1 or local is not None:  # per_node: the caller's own node's replica
            r = 0 if local is None else local
            return [(r, list(range(len(queries))), replicas[r].search.remote(list(queries), k, here))]
        parts: dict[int, list[int]] = {}
        for pos, query in enumerate(queries):
            parts.setdefault(_replica_of(query, len(replicas)), []).append(pos)
        return [(r, positions, replicas[r].search.remote([queries[p] for p in positions], k, here))
                for r, positions in parts.items()]

    def callers(self) -> list[dict[str, int]]:
        """Per replica, its search calls per caller node id (per-node routing checks)."""
        return ray.get([a.callers.remote() for a in self._replicas()])

    @staticmethod
    def _assemble(n: int, parts: list[tuple[list[int], list[list[Document]]]]) -> list[list[Document]]:
        out: list[list[Document]] = [[] for _ in range(n)]
        for positions, results in parts:
            for pos, docs in zip(positions, results, strict=True):
                out[pos] = docs
        return out

    def search(self, queries: Sequence[str], topk: int | None = None) -> list[list[Document]]:
        """Top-k documents per query, blocking. Bad input raises ``SearchInputError``."""
        if self._local is not None:
            return self._local.search(queries, self.default_topk if topk is None else topk)
        if not queries:
            return []
        for attempt in (1, 2):
            sent = self._submit(queries, topk)
            try:
                results = ray.get([ref for _, _, ref in sent], timeout=self.timeout_s)
                parts = [(pos, res) for (_, pos, _), res in zip(sent, results, strict=True)]
                return self._assemble(len(queries), parts)
            except GetTimeoutError:
                if attempt == 2:
                    raise
                self._restart_stuck(sent)
        raise AssertionError("unreachable")

    def _restart_stuck(self, sent: list[tuple[int, list[int], Any]]) -> None:
        """Kill the replicas whose search did not return in time; Ray restarts them and the
        caller sends the search again (a search has no side effects)."""
        done, _ = ray.wait([ref for _, _, ref in sent], num_returns=len(sent), timeout=0)
        stuck = [r for r, _, ref in sent if ref not in done]
        logger.warning("retrieval: replica(s) %s gave no answer within retrieval.search_timeout_s=%g s; "
                       "restarting them", stuck, self.timeout_s)
        replicas = self._replicas()
        for r in stuck:
            ray.kill(replicas[r], no_restart=False)

    def stats(self) -> SearchStats:
        """Counters of all replicas merged."""
        if self._local is not None:
            return SearchStats()
        return SearchStats.merge(ray.get([a.stats.remote() for a in self._replicas()]))

    def metrics(self) -> dict[str, float]:
        """``retrieval/...`` metrics over all replicas (counters summed, latency samples pooled)."""
        return self.stats().metrics()

    def clear_cache(self) -> None:
        ray.get([a.clear_cache.remote() for a in self._replicas()])

    def reset_stats(self) -> None:
        ray.get([a.reset_stats.remote() for a in self._replicas()])

    def shutdown(self) -> None:
        """Kill the replicas (only the group that created them should call this), each after
        it stopped its batching worker (a few seconds at most)."""
        if self._actors:
            ray.wait([actor.close.remote() for actor in self._actors], num_returns=len(self._actors), timeout=5)
        for actor in self._actors:
            ray.kill(actor)
        self._actors, self._names = [], []
