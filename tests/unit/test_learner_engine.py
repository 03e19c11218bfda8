"""Learner worker on one rank: inputs, log-probs, a PPO step that moves the right way.

Unit tier: the plain-torch engine in-process (no DeepSpeed start-up); the DeepSpeed path
with ranks runs in tests/integration/test_learner_actors.py. The builders here
(``tests.support.learner_batches``) are shared with that test.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.learner_batches import make_batch, make_tiny_model
from workers.config import LearnerConfig
from workers.learner import model as mdl
from workers.learner import ppo
from workers.learner.data import PPOBatch, build_ppo_batch, minibatches
from workers.learner.worker import LearnerWorker
from workers.sharding import shard_indices
from workers.types import TrajectoryBatch


def tiny_cfg(**overrides: object) -> LearnerConfig:
    base = LearnerConfig(engine="torch", mini_batch_size=8, micro_batch_size=4, actor_lr=1e-3,
                         critic_lr=1e-3)
    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.set_num_threads(1)
    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"))


def test_inputs_skip_both_paddings() -> None:
    traj, _ = make_batch(B=2, P=4, T=5)
    inputs = mdl.make_inputs(np.array([[0, 0, 7, 8], [5, 6, 7, 8]]), np.array([2, 4]),
                             np.array([[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]]), np.array([3, 5]))
    assert inputs.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1, 0, 0],
                                              [1, 1, 1, 1, 1, 1, 1, 1, 1]]
    assert inputs.position_ids[0, 2:7].tolist() == [0, 1, 2, 3, 4]
    assert inputs.position_ids[1].tolist() == list(range(9))
    assert inputs.prompt_len == 4 and traj.response_ids.shape == (2, 5)


def test_logprobs_match_a_manual_forward_and_ignore_padding(model_path: str) -> None:
    from transformers import AutoModelForCausalLM

    traj, _ = make_batch(B=3)
    worker = LearnerWorker(tiny_cfg(), model_path, roles=("policy", "critic"))
    worker.init_distributed()
    out = worker.compute(traj)
    assert set(out) == {"old_logprobs", "ref_logprobs", "values"}
    np.testing.assert_allclose(out["old_logprobs"], out["ref_logprobs"], atol=1e-6)
    assert np.all(out["values"] == 0)  # zero-initialised value head
    # Sample 0 alone, without any padding, token by token.
    hf = AutoModelForCausalLM.from_pretrained(model_path).eval()
    p, n = int(traj.prompt_lengths[0]), int(traj.response_lengths[0])
    seq = np.concatenate([traj.prompt_ids[0, -p:], traj.response_ids[0, :n]])
    with torch.no_grad():
        logits = hf(torch.tensor(seq[None], dtype=torch.long)).logits[0]
    logp = torch.log_softmax(logits[p - 1:p - 1 + n], -1)
    manual = logp.gather(-1, torch.tensor(seq[p:], dtype=torch.long)[:, None]).squeeze(-1)
    mask = traj.action_mask[0, :n].astype(bool)
    np.testing.assert_allclose(out["old_logprobs"][0, :n][mask], manual.numpy()[mask], atol=1e-5)
    assert np.all(out["old_logprobs"][0][~traj.action_mask[0].astype(bool)] == 0)


def test_logprobs_are_scored_at_the_rollout_temperature(model_path: str) -> None:
    traj, _ = make_batch(B=2)
    plain = LearnerWorker(tiny_cfg(), model_path)
    plain.init_distributed()
    hot = LearnerWorker(tiny_cfg(), model_path, temperature=0.5)
    hot.init_distributed()
    assert plain.policy is not None
    inputs, response, mask = plain._inputs(traj, np.arange(2))
    with torch.no_grad():
        logits = mdl.response_logits(plain.policy, inputs, response.shape[1])
    expected = mdl.logprobs_from_logits(logits / 0.5, response) * mask
    out, base = hot.compute(traj), plain.compute(traj)
    width = expected.shape[1]
    np.testing.assert_allclose(out["old_logprobs"][:, :width], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["ref_logprobs"], out["old_logprobs"], atol=1e-6)
    assert not np.allclose(out["old_logprobs"], base["old_logprobs"], atol=1e-3)


def test_observation_tokens_get_no_gradient(model_path: str) -> None:
    traj, _ = make_batch(B=2)
    worker = LearnerWorker(tiny_cfg(), model_path)
    worker.init_distributed()
    assert worker.policy is not None
    idx = np.arange(2)
    inputs, response, mask = worker._inputs(traj, idx)
    logprobs, entropy = mdl.policy_forward(worker.policy, inputs, response, with_entropy=True)
    assert entropy is not None
    logprobs.retain_grad()
    entropy.retain_grad()
    adv = torch.randn(*response.shape)
    loss, _ = ppo.actor_loss(logprobs, logprobs.detach(), adv, mask, entropy)
    loss.backward()
    assert logprobs.grad is not None and entropy.grad is not None
    obs = mask == 0
    assert torch.all(logprobs.grad[obs] == 0) and torch.all(entropy.grad[obs] == 0)
    assert torch.any(logprobs.grad[~obs] != 0)


def test_ppo_steps_with_positive_advantages_raise_action_logprobs(model_path: str) -> None:
    traj, _ = make_batch()
    worker = LearnerWorker(tiny_cfg(ppo_epochs=3, kl_coef=0.0), model_path)
    worker.init_distributed()
    before = worker.compute(traj)["old_logprobs"]
    mask = traj.action_mask.astype(np.float32)
    targets = PPOBatch(advantages=mask.copy(), returns=mask.copy(), old_logprobs=before,
                       ref_logprobs=None, old_values=None, stats={})
    params_before = worker.parameters_vector()
    metrics = worker.ppo_update(traj, targets)
    after = worker.compute(traj)["old_logprobs"]
    assert not np.allclose(worker.parameters_vector(), params_before)
    gain = ((after - before) * mask).sum() / mask.sum()
    assert gain > 0.05, gain
    assert metrics[ppo.POLICY_LOSS] < 0 and metrics[ppo.APPROX_KL] > 0


def _critic_worker(model_path: str) -> tuple[LearnerWorker, TrajectoryBatch, PPOBatch]:
    """A policy+critic worker and the targets of one batch, computed by that worker."""
    traj, reward = make_batch()
    cfg = tiny_cfg(mini_batch_size=4, micro_batch_size=2)
    worker = LearnerWorker(cfg, model_path, roles=("policy", "critic"), seed=3)
    worker.init_distributed()
    out = worker.compute(traj)
    targets = build_ppo_batch(traj, reward, cfg, out["old_logprobs"], out["ref_logprobs"],
                              out["values"])
    return worker, traj, targets


def test_full_update_with_critic_and_checkpoint(model_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    worker, traj, targets = _critic_worker(model_path)
    cfg = worker.cfg
    assert targets.old_values is not None
    metrics = worker.ppo_update(traj, targets)
    assert metrics[ppo.VALUE_LOSS] > 0 and "ppo/grad_norm" in metrics
    assert not np.all(worker.compute(traj)["values"] == 0)  # the critic learned something
    worker.save_checkpoint(str(tmp_path / "ckpt"))
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt" / "hf"))
    weights = worker.export_weights()
    for name, tensor in exported.state_dict().items():
        torch.testing.assert_close(tensor, weights[name])
    # A fresh worker restored from the checkpoint takes the very same next step.
    twin = LearnerWorker(cfg, model_path, roles=("policy", "critic"), seed=3)
    twin.init_distributed()
    twin.load_checkpoint(str(tmp_path / "ckpt"))
    worker.ppo_update(traj, targets)
    twin.ppo_update(traj, targets)
    np.testing.assert_allclose(twin.parameters_vector(), worker.parameters_vector(), atol=1e-6)
    np.testing.assert_allclose(twin.parameters_vector("critic"),
                               worker.parameters_vector("critic"), atol=1e-6)


def test_critic_warmup_update_moves_the_critic_alone(model_path: str) -> None:
    worker, traj, targets = _critic_worker(model_path)
    policy, critic = worker.parameters_vector(), worker.parameters_vector("critic")
    metrics = worker.ppo_update(traj, targets, update_policy=False)
    np.testing.assert_array_equal(worker.parameters_vector(), policy)
    assert not np.allclose(worker.parameters_vector("critic"), critic)
    assert metrics[ppo.VALUE_LOSS] > 0 and ppo.POLICY_LOSS not in metrics and "ppo/grad_norm" not in metrics
    # The next full update moves both.
    worker.ppo_update(traj, targets)
    assert not np.allclose(worker.parameters_vector(), policy)


def test_values_only_pass_leaves_the_warmup_targets_as_they_were(model_path: str) -> None:
    """Before any policy update the policy is its reference: the critic warmup skips both
    passes and drops the (zero) KL term, and gets the same values, returns and advantages."""
    worker, traj, targets = _critic_worker(model_path)
    assert targets.ref_logprobs is not None and worker.cfg.kl_coef > 0  # the KL path is live
    np.testing.assert_array_equal(targets.ref_logprobs, targets.old_logprobs)
    out = worker.compute(traj, values_only=True)
    assert set(out) == {"values"}
    np.testing.assert_array_equal(out["values"], targets.old_values)
    _, reward = make_batch()
    lean = build_ppo_batch(traj, reward, worker.cfg, np.zeros_like(targets.old_logprobs), None, out["values"])
    np.testing.assert_array_equal(lean.returns, targets.returns)
    np.testing.assert_array_equal(lean.advantages, targets.advantages)
    # Once the policy has moved, its log-probs differ from the reference's, so the KL term
    # would count: the values-only pass is for the warmup alone.
    worker.ppo_update(traj, targets)
    moved = worker.compute(traj)
    assert not np.array_equal(moved["old_logprobs"], moved["ref_logprobs"])


def test_explained_variance_is_left_out_when_the_returns_do_not_vary() -> None:
    traj, reward = make_batch()
    cfg = tiny_cfg(kl_coef=0.0)
    B, T = traj.response_ids.shape
    logprobs, values = np.zeros((B, T), np.float32), np.random.default_rng(0).normal(size=(B, T)).astype(np.float32)
    varied = build_ppo_batch(traj, reward, cfg, logprobs, None, values)
    assert np.isfinite(varied.stats[ppo.EXPLAINED_VARIANCE])
    flat = replace(reward, token_rewards=np.zeros_like(reward.token_rewards))  # every episode earned 0
    assert ppo.EXPLAINED_VARIANCE not in build_ppo_batch(traj, flat, cfg, logprobs, None, values).stats


def test_minibatches_are_shared_and_split_evenly() -> None:
    mbs = minibatches(8, 4, seed=0)
    assert sorted(np.concatenate(mbs).tolist()) == list(range(8))
    assert [len(m) for m in mbs] == [4, 4]
    halves = [shard_indices(mbs[0], r, 2) for r in range(2)]
    assert np.concatenate(halves).tolist() == mbs[0].tolist()
    with pytest.raises(ValueError):
        minibatches(8, 3, seed=0)


def test_grpo_update_without_critic(model_path: str) -> None:
    traj, reward = make_batch()
    cfg = tiny_cfg(advantage_estimator="grpo", kl_coef=0.0)
    worker = LearnerWorker(cfg, model_path, roles=("policy",))
    worker.init_distributed()
    out = worker.compute(traj)
    assert set(out) == {"old_logprobs"}
    targets = build_ppo_batch(traj, reward, cfg, out["old_logprobs"], None, None, group_size=2)
    assert targets.old_values is None
    # Each pair of samples has advantages +a and -a on its action tokens.
    first = targets.advantages[:, 0]
    np.testing.assert_allclose(first[0::2], -first[1::2], atol=1e-5)
    metrics = worker.ppo_update(traj, targets)
    assert ppo.VALUE_LOSS not in metrics and np.isfinite(metrics[ppo.POLICY_LOSS])


def test_micro_batches_are_cut_to_their_own_lengths_without_changing_results(model_path: str) -> None:
    traj, _ = make_batch(B=4)
    worker = LearnerWorker(tiny_cfg(micro_batch_size=1), model_path)
    worker.init_distributed()
    short = int(np.argmin(traj.response_lengths))
    inputs, response, mask = worker._inputs(traj, np.array([short]))
    t = int(traj.response_lengths[short])
    assert response.shape == (1, t) and mask.shape == (1, t)
    assert inputs.input_ids.shape[1] == int(traj.prompt_lengths[short]) + t
    whole = LearnerWorker(tiny_cfg(micro_batch_size=4), model_path)  # one micro-batch at full width
    whole.init_distributed()
    cut, full = worker.compute(traj), whole.compute(traj)
    assert cut["old_logprobs"].shape == full["old_logprobs"].shape == traj.response_ids.shape
    np.testing.assert_allclose(cut["old_logprobs"], full["old_logprobs"], atol=1e-4)
    order = worker._micro_chunks(np.arange(4), traj)
    lengths = [int(traj.prompt_lengths[c[0]] + traj.response_lengths[c[0]]) for c in order]
    assert lengths == sorted(lengths)


def test_logprob_micro_batch_sets_the_forward_chunks_without_changing_results(model_path: str) -> None:
    traj, _ = make_batch(B=4)
    worker = LearnerWorker(tiny_cfg(micro_batch_size=4, logprob_micro_batch_size=1), model_path)
    worker.init_distributed()
    whole = LearnerWorker(tiny_cfg(micro_batch_size=4), model_path)
    whole.init_distributed()
    sizes: list[int] = []
    chunks = worker._micro_chunks
    worker._micro_chunks = lambda idx, batch=None, size=None: [  # type: ignore[method-assign]
        c for c in chunks(idx, batch, size) if not sizes.append(len(c))]
    one, four = worker.compute(traj), whole.compute(traj)
    assert sizes == [1, 1, 1, 1]
    np.testing.assert_allclose(one["old_logprobs"], four["old_logprobs"], atol=1e-4)


def test_warmup_ratio_is_a_share_of_the_run_in_optimizer_steps(model_path: str) -> None:
    from workers.learner.data import ppo_optimizer_steps
    from workers.learner.engine import lr_lambda, warmup_steps

    # the release's 3B: 1,120 steps of 128 samples, mini-batch 32, one epoch: 4 optimizer steps a step
    total = ppo_optimizer_steps(1120, 128, 32, 1)
    assert total == 4480
    cfg = tiny_cfg(warmup_steps=7)
    assert warmup_steps(cfg, None, total) == 7 and warmup_steps(cfg, 0.285, total) == 1276
    factor = lr_lambda(warmup_steps(cfg, 0.285, total), "constant", total)
    assert factor(0) == pytest.approx(1 / 1276) and factor(1275) == 1.0
    worker = LearnerWorker(tiny_cfg(actor_warmup_ratio=0.5, critic_warmup_ratio=0.25), model_path,
                           roles=("policy", "critic"), total_steps=8)
    worker.init_distributed()
    assert worker.policy is not None and worker.critic is not None
    policy_lr = worker.policy.optimizer.param_groups[0]["lr"]  # type: ignore[attr-defined]
    critic_lr = worker.critic.optimizer.param_groups[0]["lr"]  # type: ignore[attr-defined]
    assert policy_lr == pytest.approx(1e-3 / 4) and critic_lr == pytest.approx(1e-3 / 2)
