"""The batching searcher under faults: a dead worker task, a full queue, the cache's byte bound."""

from __future__ import annotations

import asyncio
import threading

import pytest

from retrieval_service.batching import (
    BatchingSearcher,
    SearcherBusyError,
    SearcherStoppedError,
    entry_bytes,
)
from workers.types import Document

WAIT_S = 5.0  # callers must learn of a failure well within this


class WorkerKiller(BaseException):
    """Not an ``Exception``: escapes every ``except Exception`` and ends the worker task."""


class FakeRetriever:
    """Returns ``topk`` documents per query; can block on a gate or kill the calling task."""

    def __init__(self, kill_on: str | None = None) -> None:
        self.kill_on = kill_on
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, queries: list[str], topk: int) -> list[list[Document]]:
        self.gate.wait(WAIT_S)
        self.calls.append(list(queries))
        if self.kill_on in queries:
            raise WorkerKiller("search thread blew up")
        return [[Document(f"{q}-{i}", q, "x" * 50) for i in range(topk)] for q in queries]


async def _gather_within(*calls: object) -> list[object]:
    return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), WAIT_S)  # type: ignore[arg-type]


def test_a_dying_worker_fails_every_waiting_search_then_restarts() -> None:
    fake = FakeRetriever(kill_on="poison")
    searcher = BatchingSearcher(fake, max_batch_size=1, max_wait_ms=0, cache_size=0)

    async def run() -> None:
        fake.gate.clear()
        running = asyncio.ensure_future(searcher.search(["poison"], 2))
        await asyncio.sleep(0.05)  # the poison batch runs; these queue up behind it
        queued = [asyncio.ensure_future(searcher.search([f"q{i}"], 2)) for i in range(3)]
        await asyncio.sleep(0.05)
        fake.gate.set()
        results = await _gather_within(running, *queued)
        assert all(isinstance(r, SearcherStoppedError) for r in results), results
        assert "died" in str(results[1]) and searcher.pending == 0
        # The next search starts a fresh worker task.
        assert (await asyncio.wait_for(searcher.search(["after"], 1), WAIT_S))[0][0].id == "after-0"

    asyncio.run(run())
    searcher.close()


def test_an_exception_outside_a_batch_does_not_leave_callers_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # What Python 3.10 did: asyncio.TimeoutError escaped the collect step and ended the task.
    fake = FakeRetriever()
    searcher = BatchingSearcher(fake, max_wait_ms=0, cache_size=0)

    async def broken_collect() -> list[tuple[str, int]]:
        await asyncio.sleep(0.01)
        raise asyncio.TimeoutError("escaped wait_for")

    monkeypatch.setattr(searcher, "_collect", broken_collect)

    async def run() -> None:
        results = await _gather_within(searcher.search(["a", "b"], 1), searcher.search(["c"], 1))
        assert all(isinstance(r, SearcherStoppedError) for r in results), results

    asyncio.run(run())
    searcher.close()


def test_close_fails_waiting_searches() -> None:
    fake = FakeRetriever()
    searcher = BatchingSearcher(fake, max_batch_size=1, max_wait_ms=0, cache_size=0)

    async def run() -> None:
        fake.gate.clear()
        calls = [asyncio.ensure_future(searcher.search([f"q{i}"], 1)) for i in range(3)]
        await asyncio.sleep(0.05)
        searcher.close()
        fake.gate.set()
        results = await _gather_within(*calls)
        assert all(isinstance(r, SearcherStoppedError) for r in results), results

    asyncio.run(run())


def test_a_full_queue_refuses_new_work_but_not_shared_work() -> None:
    fake = FakeRetriever()
    searcher = BatchingSearcher(fake, max_batch_size=8, max_wait_ms=0, cache_size=0, max_pending=4)

    async def run() -> None:
        fake.gate.clear()
        first = asyncio.ensure_future(searcher.search(["a", "b", "c"], 1))
        await asyncio.sleep(0.05)
        assert searcher.pending == 3
        with pytest.raises(SearcherBusyError, match=r"3 queries wait .* limit of 4 \(server.max_pending\)"):
            await searcher.search(["d", "e"], 1)  # 3 + 2 > 4
        fits = asyncio.ensure_future(searcher.search(["d"], 1))  # 3 + 1 = 4
        shared = asyncio.ensure_future(searcher.search(["a", "b"], 1))  # in flight: no new work
        await asyncio.sleep(0.05)
        fake.gate.set()
        results = await _gather_within(first, fits, shared)
        assert not any(isinstance(r, BaseException) for r in results), results
        # With nothing waiting, a request larger than the bound is still served.
        assert len(await asyncio.wait_for(searcher.search(list("vwxyz"), 1), WAIT_S)) == 5

    asyncio.run(run())
    searcher.close()


def test_cache_is_bounded_in_bytes() -> None:
    fake = FakeRetriever()
    one = entry_bytes(("q0", 3), fake(["q0"], 3)[0])
    fake.calls.clear()
    searcher = BatchingSearcher(fake, max_wait_ms=0, cache_size=1000, cache_max_bytes=2 * one + one // 2)

    async def run() -> None:
        for q in ("q0", "q1", "q2"):
            await searcher.search([q], 3)
        assert searcher.cache_bytes == 2 * one  # q0 evicted by bytes, not by entries
        await searcher.search(["q2", "q1"], 3)
        assert len(fake.calls) == 3  # both were cached
        await searcher.search(["q0"], 3)
        assert len(fake.calls) == 4  # q0 was not
        await searcher.search(["huge"], 30)  # one entry above the whole budget: not cached
        assert searcher.cache_bytes == 2 * one

    asyncio.run(run())
    searcher.clear_cache()
    assert searcher.cache_bytes == 0
    searcher.close()



def test_aclose_ends_the_worker_task_on_its_loop() -> None:
    """After ``aclose`` the worker task is finished, so its loop has nothing pending to report
    ("Task was destroyed but it is pending!") when the process exits."""
    searcher = BatchingSearcher(FakeRetriever(), max_batch_size=4, max_wait_ms=1, cache_size=0)

    async def run() -> None:
        await searcher.search(["q"], 2)
        worker = searcher._worker
        assert worker is not None and not worker.done()  # idle, waiting for the next query
        await searcher.aclose()
        assert worker.done() and worker.cancelled()
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(run())
