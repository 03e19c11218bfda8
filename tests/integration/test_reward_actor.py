"""Reward actors in a local Ray cluster, on hand-built trajectories (issue 4)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from tests.support.reward_samples import (
    SAMPLE,
    assert_same,
    make_batch,
    three_samples,
)
from workers.config import RewardConfig
from workers.reward import MalformedTrajectoryError, RewardWorker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def group(ray_cluster: dict) -> Iterator[object]:
    from actors.reward import RewardGroup

    reward_group = RewardGroup(RewardConfig(num_workers=2), actor_options={"num_cpus": 0.5})
    yield reward_group
    reward_group.shutdown()


def test_replicas_split_an_object_ref_and_match_the_worker(group) -> None:
    import ray

    batch = three_samples()
    batch_ref = ray.put(batch)
    result_ref = group.score_ref(batch_ref)
    assert isinstance(result_ref, ray.ObjectRef)
    assert group.num_workers == 2
    assert_same(ray.get(result_ref), RewardWorker(RewardConfig()).score(batch))


def test_more_replicas_than_samples(ray_cluster: dict) -> None:
    from actors.reward import RewardGroup

    batch = make_batch([SAMPLE, replace(SAMPLE, sample_id="s1")])
    wide = RewardGroup(RewardConfig(num_workers=3), actor_options={"num_cpus": 0.25})
    try:
        rewards = wide.score(batch)  # a plain batch is put in the object store once
    finally:
        wide.shutdown()
    assert len(rewards) == 2
    assert rewards.outcome.tolist() == pytest.approx([1.618, 1.618])


def test_malformed_trajectory_error_names_the_sample(group) -> None:
    import ray

    bad = replace(SAMPLE, steps=(), sample_id="broken-42")
    batch_ref = ray.put(make_batch([SAMPLE, SAMPLE, bad]))
    with pytest.raises(MalformedTrajectoryError, match="'broken-42': has no turns"):
        ray.get(group.score_ref(batch_ref))


def test_in_process_group_accepts_refs_and_batches(ray_cluster: dict) -> None:
    import ray

    from actors.reward import RewardGroup

    local = RewardGroup(RewardConfig(num_workers=0))
    batch = three_samples()
    assert local.num_workers == 0
    expected = RewardWorker(RewardConfig()).score(batch)
    assert_same(local.score(ray.put(batch)), expected)
    assert_same(ray.get(local.score_ref(batch)), expected)


def test_replicas_score_with_the_corpus_idf(ray_cluster: dict, tmp_path) -> None:
    import json

    import numpy as np

    from actors.reward import RewardGroup, corpus_idf
    from retrieval_service.corpus import CorpusError
    from tests.support.reward_samples import NEAR, PARIS, ROME, near_miss_sample
    from workers.config import RetrievalConfig
    from workers.reward.info_gain import CorpusIdf

    passages = [("Paris", PARIS), ("Rome", ROME), ("Lyon", NEAR), ("Lyon", "Lyon is a city of France")]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "title": t, "text": x}) + "\n"
                              for i, (t, x) in enumerate(passages)))
    idf = corpus_idf(RetrievalConfig(corpus_path=str(corpus)))
    assert idf == CorpusIdf.from_texts(f'"{t}"\n{x}' for t, x in passages)  # the texts the reward sees
    cfg = RewardConfig(num_workers=2, info_gain_idf="corpus")
    group = RewardGroup(cfg, actor_options={"num_cpus": 0.5}, idf=idf)
    try:
        batch = make_batch([near_miss_sample(), SAMPLE, near_miss_sample()])
        rewards = group.score(batch)
    finally:
        group.shutdown()
    assert_same(rewards, RewardWorker(cfg, idf).score(batch))
    assert not np.allclose(rewards.token_rewards, RewardWorker(RewardConfig()).score(batch).token_rewards)

    corpus.write_text(corpus.read_text() + '{"id": "d9", "title": "x"}\n')
    with pytest.raises(CorpusError, match="line 5: missing field 'text'"):
        corpus_idf(RetrievalConfig(corpus_path=str(corpus)))
