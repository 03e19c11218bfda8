"""The Ray-free retriever (dense and BM25) and the batching/caching searcher in front of it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval_service.batching import (
    BATCHES,
    CACHE_HITS,
    LATENCY_MS_P99,
    QUERIES,
    BatchingSearcher,
    normalize_query,
)
from retrieval_service.encoders import DenseEncoder
from retrieval_service.index import IndexMismatchError
from retrieval_service.packing import plan_chunks
from retrieval_service.retriever import Retriever, SearchInputError, build_retriever
from workers.config import RetrievalConfig
from workers.types import Document

FACTS = [("Zorbania", "The capital of Zorbania is Quellin, a port on the northern sea."),
         ("Quellin", "Quellin is a port city founded in 1412 by the merchant Ardo Vess."),
         ("Ardo Vess", "Ardo Vess was a merchant who studied at the University of Lantry."),
         ("University of Lantry", "The University of Lantry is a college in the town of Mirefield."),
         ("Mirefield", "Mirefield is a market town known for its glassworks and canals."),
         ("Tavish Orr", "Tavish Orr directed the film The Copper Lantern in 1987."),
         ("The Copper Lantern", "The Copper Lantern is a 1987 film produced by Hollin Pictures."),
         ("Hollin Pictures", "Hollin Pictures is a film studio headquartered in Bexmoor."),
         ("Bexmoor", "Bexmoor is a city on the river Tarn, the largest city of Kelvary."),
         ("Kelvary", "Kelvary is a country whose currency is the silver drem.")]


def write_corpus(path: Path, facts: list[tuple[str, str]] = FACTS) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{i}", "contents": f'"{t}"\n{x}'}) + "\n"
                            for i, (t, x) in enumerate(facts)))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="module")
def dense(corpus: Path) -> Retriever:
    return build_retriever(RetrievalConfig(corpus_path=str(corpus)), device="cpu")


@pytest.fixture(scope="module")
def bm25(corpus: Path) -> Retriever:
    return build_retriever(RetrievalConfig(method="bm25", corpus_path=str(corpus)))


@pytest.mark.parametrize("which", ["dense", "bm25"])
def test_search_finds_the_right_passage(which: str, request: pytest.FixtureRequest) -> None:
    retriever: Retriever = request.getfixturevalue(which)
    queries = ["capital of Zorbania", "the director Tavish Orr", "currency of Kelvary"]
    results = retriever.search(queries, 3)
    assert [docs[0].title for docs in results] == ["Zorbania", "Tavish Orr", "Kelvary"]
    for docs in results:
        assert len(docs) == 3 and all(isinstance(d, Document) for d in docs)
        assert [d.score for d in docs] == sorted((d.score for d in docs), reverse=True)
    top = results[0][0]
    assert (top.id, top.text) == ("d0", FACTS[0][1])
    assert retriever.search([], 3) == []


@pytest.mark.parametrize(("queries", "topk", "message"), [
    ([""], 3, "empty or whitespace"), (["  \t"], 3, "empty or whitespace"),
    ([42], 3, r"queries\[0\] must be a string"), ("a query", 3, "must be a list"),
    (["ok"], 0, "between 1 and the corpus size 10"), (["ok"], 11, "between 1 and the corpus size"),
    (["ok"], True, "must be an integer"), (["ok"], 2.0, "must be an integer")])
def test_bad_arguments_raise(bm25: Retriever, queries: object, topk: object, message: str) -> None:
    with pytest.raises(SearchInputError, match=message):
        bm25.search(queries, topk)  # type: ignore[arg-type]


def test_encoder_is_batch_invariant_and_normalized(dense: Retriever) -> None:
    texts = ["Kelvary", "a much longer query about the capital city of Zorbania and its northern port", "drem"]
    together = dense.encoder.encode_queries(texts)  # split into passes by length, padded inside each
    alone = np.concatenate([dense.encoder.encode_queries([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    bf16 = DenseEncoder(device="cpu", dtype="bfloat16").encode_queries(texts)
    assert bf16.dtype == np.float32 and np.min(np.sum(bf16 * together, axis=1)) > 0.99


def test_plan_chunks_covers_everything_cheaply() -> None:
    lengths = sorted(np.random.default_rng(0).integers(3, 60, size=200).tolist())
    ends = plan_chunks(lengths, max_count=64)
    starts = [0, *ends[:-1]]
    assert ends[-1] == 200 and all(0 < e - s <= 64 for s, e in zip(starts, ends, strict=True))

    def cost(bounds: list[int]) -> int:
        return sum(32 + (e - s) * lengths[e - 1] for s, e in zip([0, *bounds[:-1]], bounds, strict=True))

    assert cost(ends) <= cost([64, 128, 192, 200])  # never worse than fixed-size chunks


def test_index_dir_reopens_and_checks_corpus(corpus: Path, tmp_path: Path) -> None:
    cfg = RetrievalConfig(method="bm25", corpus_path=str(corpus), index_dir=str(tmp_path / "idx"))
    built = build_retriever(cfg)  # builds into the empty index_dir
    alone = build_retriever(dataclasses.replace(cfg, corpus_path=None))  # index_dir alone
    assert alone.search(["Hollin Pictures studio"], 2) == built.search(["Hollin Pictures studio"], 2)
    changed = write_corpus(tmp_path / "changed.jsonl", FACTS[:-1])
    with pytest.raises(IndexMismatchError, match="is not the corpus"):
        build_retriever(dataclasses.replace(cfg, corpus_path=str(changed)))


def test_temporary_index_leaves_nothing_on_disk(corpus: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    retriever = build_retriever(RetrievalConfig(method="bm25", corpus_path=str(corpus)))
    assert list(tmp_path.iterdir()) == []  # deleted once open, even a killed actor leaks nothing
    assert retriever.search(["river Tarn city"], 1)[0][0].title == "Bexmoor"  # served from the mapped files
    assert retriever.corpus.get("d4").title == "Mirefield"


def test_wiki18_sample_bm25(shared_data: Path) -> None:
    retriever = build_retriever(RetrievalConfig(method="bm25",
                                                corpus_path=str(shared_data / "wiki_sample_corpus.jsonl")))
    assert retriever.num_passages == 1000
    assert retriever.search(["Horatio Hale ethnologist Wilkes expedition"], 1)[0][0].title == "Horatio Hale"


def test_retrieval_service_never_imports_ray() -> None:
    code = ("import sys, retrieval_service.retriever, retrieval_service.batching, retrieval_service.http, "
            "retrieval_service.index, retrieval_service.encoders, retrieval_service.sparse; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


class Recording:
    """Wraps a real retriever and records the batches it is called with."""

    def __init__(self, retriever: Retriever, fail_on: str | None = None) -> None:
        self.retriever, self.fail_on = retriever, fail_on
        self.calls: list[tuple[list[str], int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, queries: list[str], topk: int) -> list[list[Document]]:
        self.gate.wait(5)
        self.calls.append((list(queries), topk))
        if self.fail_on in queries:
            raise RuntimeError("boom")
        return self.retriever.search(queries, topk)


def test_normalize_query() -> None:
    assert normalize_query("  capital  of\nZorbania ") == "capital of Zorbania"


def test_concurrent_callers_coalesce_into_batches(bm25: Retriever) -> None:
    rec = Recording(bm25)
    searcher = BatchingSearcher(rec, num_passages=bm25.num_passages, max_wait_ms=50, cache_size=0)
    queries = [f"{title} facts" for title, _ in FACTS]

    async def run() -> list[list[list[Document]]]:
        return await asyncio.gather(*(searcher.search([q], 2) for q in queries))

    results = asyncio.run(run())
    assert [r[0] for r in results] == bm25.search(queries, 2)  # same answers, same order
    assert len(rec.calls) < len(queries) and max(len(c[0]) for c in rec.calls) > 1
    metrics = searcher.metrics()
    assert metrics[QUERIES] == len(queries) and metrics[BATCHES] == len(rec.calls)
    searcher.close()


def test_cache_hits_and_topk_prefix(bm25: Retriever) -> None:
    rec = Recording(bm25)
    searcher = BatchingSearcher(rec, num_passages=bm25.num_passages, max_wait_ms=1, cache_size=100)

    async def run() -> None:
        first = await searcher.search(["capital of Zorbania", "Bexmoor river"], 3)
        again = await searcher.search(["  capital   of Zorbania"], 3)  # same after normalization
        assert again[0] == first[0] and len(rec.calls) == 1
        mixed = await asyncio.gather(searcher.search(["Mirefield town"], 1), searcher.search(["Mirefield town"], 4))
        assert mixed[0][0] == mixed[1][0][:1]  # one search with the larger k serves both

    asyncio.run(run())
    metrics = searcher.metrics()
    assert metrics[CACHE_HITS] == 1 and metrics[QUERIES] == 5 and metrics[LATENCY_MS_P99] > 0
    searcher.clear_cache()
    searcher.close()


def test_identical_queries_in_flight_share_one_search(bm25: Retriever) -> None:
    rec = Recording(bm25)
    searcher = BatchingSearcher(rec, num_passages=bm25.num_passages, max_wait_ms=0, cache_size=0)

    async def run() -> None:
        rec.gate.clear()
        first = asyncio.ensure_future(searcher.search(["Kelvary currency"], 2))
        await asyncio.sleep(0.05)  # the first search is now running (blocked on the gate)
        waiting = [asyncio.ensure_future(searcher.search(["Kelvary currency"], 2)) for _ in range(5)]
        await asyncio.sleep(0.05)
        waiting[0].cancel()  # one caller giving up must not cancel the shared search
        rec.gate.set()
        results = await asyncio.gather(first, *waiting[1:])
        assert all(r == results[0] for r in results)

    asyncio.run(run())
    assert len(rec.calls) == 1
    searcher.close()


def test_failures_reach_callers_and_worker_survives(bm25: Retriever) -> None:
    rec = Recording(bm25, fail_on="poison")
    searcher = BatchingSearcher(rec, num_passages=bm25.num_passages, max_wait_ms=30, cache_size=0)

    async def run() -> None:
        with pytest.raises(SearchInputError):
            await searcher.search(["   "], 2)
        bad, good = await asyncio.gather(searcher.search(["poison"], 2), searcher.search(["Quellin port"], 2),
                                         return_exceptions=True)
        assert isinstance(bad, RuntimeError) and good[0][0].title == "Quellin"  # batch split on failure
        assert (await searcher.search(["Tarn river"], 1))[0][0].title == "Bexmoor"

    asyncio.run(run())
    searcher.close()
