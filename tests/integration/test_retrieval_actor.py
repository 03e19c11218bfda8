"""RetrievalActor / RetrievalGroup on a local Ray cluster: coalescing, caching, replicas."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
import ray

from actors.retrieval import RetrievalActor, RetrievalGroup
from retrieval_service.batching import BATCH_SIZE_MAX, BATCHES, CACHE_HITS, QUERIES, REQUESTS
from retrieval_service.index import build_index
from retrieval_service.retriever import Retriever, SearchInputError, build_retriever
from workers.config import RetrievalConfig

pytestmark = pytest.mark.integration

PLACES = ["Quellin", "Mirefield", "Bexmoor", "Lantry", "Tarnwick", "Oskel", "Varrow", "Dunmere",
          "Halbrook", "Ystrel", "Corrin", "Pellham", "Saldoon", "Fenwarp", "Glimmerby", "Rathkeel"]


@pytest.fixture(scope="module")
def bm25_cfg(tmp_path_factory: pytest.TempPathFactory) -> RetrievalConfig:
    root = tmp_path_factory.mktemp("actor")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(
        json.dumps({"id": f"d{i}", "title": p, "text": f"{p} is a town famous for its {i}th-century mill."}) + "\n"
        for i, p in enumerate(PLACES)))
    cfg = RetrievalConfig(method="bm25", corpus_path=str(corpus), index_dir=str(root / "index"),
                          max_batch_wait_ms=50, num_cpus=1)
    build_index(cfg, corpus, cfg.index_dir, progress=False)  # replicas load it, none rebuilds
    return cfg


@pytest.fixture(scope="module")
def local(bm25_cfg: RetrievalConfig) -> Retriever:
    return build_retriever(bm25_cfg)


@pytest.fixture(scope="module")
def shared_group(ray_cluster: dict, bm25_cfg: RetrievalConfig) -> Iterator[RetrievalGroup]:
    group = RetrievalGroup(bm25_cfg, num_replicas=1)
    group.wait_ready(timeout=120)
    yield group
    group.shutdown()


@pytest.fixture
def group(shared_group: RetrievalGroup) -> RetrievalGroup:
    shared_group.clear_cache()
    shared_group.reset_stats()
    return shared_group


def queries_for(places: list[str]) -> list[str]:
    return [f"town of {p} mill" for p in places]


def test_concurrent_callers_are_coalesced(group: RetrievalGroup, local: Retriever) -> None:
    actor = group.actors[0]
    queries = queries_for(PLACES)
    refs = [actor.search.remote([q], 2) for q in queries]  # 16 callers at once
    results = [r[0] for r in ray.get(refs)]
    assert results == local.search(queries, 2)
    assert [docs[0].title for docs in results] == PLACES
    metrics = group.metrics()
    assert metrics[REQUESTS] == 16 and metrics[QUERIES] == 16
    assert metrics[BATCHES] < 16 and metrics[BATCH_SIZE_MAX] > 1


def test_cache_hits_are_counted(group: RetrievalGroup) -> None:
    queries = queries_for(PLACES[:5])
    first = group.search(queries, 3)
    group.reset_stats()
    again = group.search([f"  {q.replace(' ', '  ')} " for q in queries], 3)  # same once normalized
    assert again == first
    metrics = group.metrics()
    assert metrics[CACHE_HITS] == 5 and metrics[BATCHES] == 0
    group.clear_cache()
    group.search(queries, 3)
    assert group.metrics()[BATCHES] == 1


def test_bad_input_raises_through_ray(group: RetrievalGroup) -> None:
    with pytest.raises(SearchInputError, match="empty or whitespace"):
        group.search(["fine", " "], 2)
    with pytest.raises(SearchInputError, match="between 1 and the corpus size 16"):
        group.search(["fine"], 17)
    assert group.search(["Varrow"], 1)[0][0].title == "Varrow"  # still serving


def test_replicas_behind_one_handle(ray_cluster: dict, bm25_cfg: RetrievalConfig, local: Retriever) -> None:
    group = RetrievalGroup(dataclasses.replace(bm25_cfg, num_replicas=2))
    try:
        group.wait_ready(timeout=120)
        queries = queries_for(PLACES)
        assert group.search(queries) == local.search(queries, bm25_cfg.topk)  # order kept over the split
        per_replica = ray.get([a.metrics.remote() for a in group.actors])
        assert all(m[QUERIES] > 0 for m in per_replica) and sum(m[QUERIES] for m in per_replica) == 16
        group.search(queries)  # each query returns to the replica whose cache holds it
        assert group.metrics()[CACHE_HITS] == 16

        @ray.remote(num_cpus=0)
        def rollout_worker(handle: RetrievalGroup, batch: list[str]) -> list[str]:
            return [docs[0].title for docs in handle.search(batch, 1)]

        assert ray.get(rollout_worker.remote(group, queries[:4])) == PLACES[:4]
    finally:
        group.shutdown()


def test_dense_actor_default_encoder(ray_cluster: dict, bm25_cfg: RetrievalConfig) -> None:
    cfg = RetrievalConfig(corpus_path=bm25_cfg.corpus_path, topk=2, num_cpus=1)  # MiniLM, built in the actor
    group = RetrievalGroup(cfg, device="cpu", num_replicas=1)
    try:
        info = group.wait_ready(timeout=300)[0]
        assert (info["method"], info["encoder"], info["num_passages"]) == ("dense", cfg.encoder, 16)
        results = group.search(["Glimmerby mill town", "the town called Oskel"])
        assert [len(r) for r in results] == [2, 2]
        assert [r[0].title for r in results] == ["Glimmerby", "Oskel"]
    finally:
        group.shutdown()


@pytest.mark.parametrize("num_cpus", [1, 2])
def test_actor_encoder_threads_follow_num_cpus(ray_cluster: dict, bm25_cfg: RetrievalConfig, num_cpus: int) -> None:
    # An inherited OMP_NUM_THREADS (here 3) keeps Ray from setting its own: the actor must still
    # run its encoder on what retrieval.num_cpus reserves, as the one-at-a-time baseline does.
    actor = ray.remote(RetrievalActor).options(
        num_cpus=num_cpus, runtime_env={"env_vars": {"OMP_NUM_THREADS": "3"}}).remote(
        dataclasses.replace(bm25_cfg, num_cpus=num_cpus))
    try:
        assert ray.get(actor.num_threads.remote(), timeout=120) == num_cpus
    finally:
        ray.kill(actor)
