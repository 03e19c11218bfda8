"""LearnerGroup on a local Ray cluster: DeepSpeed ZeRO-2 over gloo, 2 ranks vs 1 rank.

Integration tier: real Ray actors in a placement group, real DeepSpeed (CPU accelerator).
A PPO step on a fixed batch must leave both ranks with identical parameters, equal (to
fp32 tolerance) to those of a 1-rank run: the loss aggregation and DeepSpeed's gradient
averaging together do not depend on the rank count.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.support.learner_batches import make_batch, make_tiny_model
from workers.config import LearnerConfig
from workers.learner import data, ppo

pytestmark = pytest.mark.integration


def _run(cfg: LearnerConfig, model_path: str, traj_ref: object, reward_ref: object
         ) -> tuple[dict[str, float], list[np.ndarray], list[np.ndarray], dict]:
    from actors.learner import LearnerGroup

    group = LearnerGroup(cfg, model_path, seed=0)
    try:
        metrics = group.update(traj_ref, reward_ref, batch_size=8)
        policy = [group.parameters(r) for r in range(cfg.num_ranks)]
        critic = [group.parameters(r, role="critic") for r in range(cfg.num_ranks)]
        weights = group.export_weights()
    finally:
        group.shutdown()
    return metrics, policy, critic, weights


def test_two_zero2_ranks_match_one_rank(ray_cluster: dict, tmp_path: Path) -> None:
    import ray

    model_path = make_tiny_model(tmp_path / "tiny")
    traj, reward = make_batch(B=8)
    traj_ref, reward_ref = ray.put(traj), ray.put(reward)
    cfg = LearnerConfig(engine="deepspeed", zero_stage=2, mini_batch_size=8,
                        micro_batch_size=2, actor_lr=1e-3, critic_lr=1e-3)
    m2, policy2, critic2, weights = _run(replace(cfg, num_ranks=2), model_path, traj_ref,
                                         reward_ref)
    m1, policy1, critic1, _ = _run(replace(cfg, num_ranks=1), model_path, traj_ref, reward_ref)

    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
    start = np.concatenate([initial[k].float().flatten().numpy() for k in sorted(initial)])
    assert np.abs(policy2[0] - start).max() > 1e-4  # the step did move the weights
    np.testing.assert_array_equal(policy2[0], policy2[1])
    np.testing.assert_array_equal(critic2[0], critic2[1])
    # Each rank sorts its share into micro-batches by length, so sums run in another order:
    # equal up to float rounding, far below the step size (lr 1e-3).
    np.testing.assert_allclose(policy2[0], policy1[0], atol=5e-5, rtol=0)
    np.testing.assert_allclose(critic2[0], critic1[0], atol=5e-5, rtol=0)
    # Same gradient, not only the same Adam step (Adam hides a constant factor).
    assert m2["ppo/grad_norm"] == pytest.approx(m1["ppo/grad_norm"], rel=1e-4)
    assert m2["ppo/critic_grad_norm"] == pytest.approx(m1["ppo/critic_grad_norm"], rel=1e-4)
    for key in (ppo.POLICY_LOSS, ppo.VALUE_LOSS, ppo.ENTROPY):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-7)
    assert "model.embed_tokens.weight" in weights and "lm_head.weight" in weights


def test_zero3_separate_critic_checkpoint_round_trip(ray_cluster: dict, tmp_path: Path) -> None:
    """ZeRO-3 shards over 2 ranks, critic in its own 2 ranks; a checkpoint resumes exactly."""
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from actors.learner import LearnerGroup

    model_path = make_tiny_model(tmp_path / "tiny")
    traj, reward = make_batch(B=8)
    traj_ref, reward_ref = ray.put(traj), ray.put(reward)
    cfg = LearnerConfig(engine="deepspeed", zero_stage=3, num_ranks=2, num_cpus_per_rank=0.5,
                        colocate_critic=False, mini_batch_size=4, micro_batch_size=2,
                        actor_lr=1e-3, critic_lr=1e-3, warmup_steps=2)
    group = LearnerGroup(cfg, model_path, seed=1)
    try:
        assert len(group.critic_ranks) == 2
        # A critic warmup update runs the critic ranks' forward passes alone and moves the critic
        # alone. Before any policy step its targets are those of the full passes, bit for bit.
        full, lean = ray.get([group.prepare(traj_ref, reward_ref, 8, values_only=v)[0] for v in (False, True)])
        assert full.ref_logprobs is not None and lean.ref_logprobs is None
        np.testing.assert_array_equal(full.old_logprobs, full.ref_logprobs)
        np.testing.assert_array_equal(lean.returns, full.returns)
        np.testing.assert_array_equal(lean.advantages, full.advantages)
        policy_before, critic_before = group.parameters(0), group.parameters(1, role="critic")
        warm = group.update(traj_ref, reward_ref, batch_size=8, update_policy=False)
        np.testing.assert_array_equal(group.parameters(0), policy_before)
        assert not np.allclose(group.parameters(1, role="critic"), critic_before)
        assert warm[ppo.VALUE_LOSS] > 0 and ppo.POLICY_LOSS not in warm and data.KL_REF not in warm
        group.update(traj_ref, reward_ref, batch_size=8)
        group.save_checkpoint(str(tmp_path / "ckpt"))
        metrics = group.update(traj_ref, reward_ref, batch_size=8)
        after = group.parameters(0), group.parameters(1, role="critic")
        group.load_checkpoint(str(tmp_path / "ckpt"))
        again = group.update(traj_ref, reward_ref, batch_size=8)
        resumed = group.parameters(0), group.parameters(1, role="critic")
        weights = group.export_weights()
    finally:
        group.shutdown()
    assert again["ppo/lr"] == pytest.approx(metrics["ppo/lr"])  # scheduler state restored
    np.testing.assert_allclose(resumed[0], after[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(resumed[1], after[1], atol=1e-6, rtol=0)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt" / "hf"))
    assert hf.state_dict()["model.norm.weight"].shape == weights["model.norm.weight"].shape
    assert not torch.equal(hf.state_dict()["model.norm.weight"], weights["model.norm.weight"])


def test_bf16_on_cpu_accumulates_updates_below_bf16_resolution(ray_cluster: dict, tmp_path: Path) -> None:
    """``learner.precision=bf16`` on CPU: bf16 weights for the passes, fp32 master weights
    in the optimizer. Each Adam step here (~lr = 1e-5) is below half a bf16 step of every
    weight with magnitude in [2^-6, 2^-4] (>= 6.1e-5), so bf16-only updates could never move
    those weights; summed in fp32 over eight updates, many of them must move."""
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from actors.learner import LearnerGroup

    model_path = make_tiny_model(tmp_path / "tiny")
    traj, reward = make_batch(B=8)
    traj_ref, reward_ref = ray.put(traj), ray.put(reward)
    cfg = LearnerConfig(engine="deepspeed", zero_stage=0, precision="bf16", mini_batch_size=8,
                        micro_batch_size=4, actor_lr=1e-5, critic_lr=1e-5, grad_clip=1e9)
    group = LearnerGroup(cfg, model_path, seed=0)
    try:
        metrics = [group.update(traj_ref, reward_ref, batch_size=8) for _ in range(8)]
        weights = group.export_weights()
    finally:
        group.shutdown()
    initial = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert weights[name].dtype == torch.bfloat16
    start = initial[name].to(torch.bfloat16).float()
    coarse = (start.abs() >= 2**-6) & (start.abs() <= 2**-4)
    assert int(coarse.sum()) > 1000
    moved = (weights[name].float() != start)[coarse].float().mean().item()
    assert moved > 0.2, f"only {moved:.1%} of the coarse weights moved"
    assert all(np.isfinite(m[ppo.POLICY_LOSS]) for m in metrics)


def test_a_hung_learner_rank_fails_the_update_naming_the_phase_and_the_rank(
        ray_cluster: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real hang (the test-only STEPSEARCH_TEST_HANG knob sleeps inside ``ppo_update``):
    ``learner.timeout_s`` later the update raises ``LearnerFailure``; a failing rank (a
    non-finite update limit reached inside the rank) raises it with the rank's own message."""
    import ray

    from actors.learner import LearnerFailure, LearnerGroup
    from workers.faults import HANG_ENV

    model_path = make_tiny_model(tmp_path / "tiny")
    traj, reward = make_batch(B=8)
    traj_ref, reward_ref = ray.put(traj), ray.put(reward)
    flag = tmp_path / "hung"
    monkeypatch.setenv(HANG_ENV, f"learner_update:600:{flag}")
    cfg = LearnerConfig(engine="torch", mini_batch_size=8, micro_batch_size=4)
    group = LearnerGroup(cfg, model_path, seed=0)
    try:
        flag.touch()  # a first update without the hang (start-up is slow on a busy machine)
        group.update(traj_ref, reward_ref, batch_size=8)
        flag.unlink()
        group.cfg = replace(cfg, timeout_s=30.0)
        with pytest.raises(LearnerFailure) as failure:
            group.update(traj_ref, reward_ref, batch_size=8)  # forward passes fine, then the rank hangs
    finally:
        group.shutdown()
    assert flag.exists()  # it did hang
    assert str(failure.value) == "learner update: policy rank 0 gave no answer within 30 s (learner.timeout_s=30)"

    nan_reward = replace(reward, token_rewards=np.full_like(reward.token_rewards, np.nan))
    group = LearnerGroup(replace(cfg, max_nonfinite_updates=1), model_path, seed=0)
    try:
        before = group.parameters()
        with pytest.raises(LearnerFailure, match=r"learner update: policy rank 0 failed \(NonFiniteUpdates: 1 "
                                                 r"optimizer steps in a row had a non-finite"):
            group.update(traj_ref, ray.put(nan_reward), batch_size=8)
        np.testing.assert_array_equal(group.parameters(), before)  # the NaN step never reached the weights
    finally:
        group.shutdown()
