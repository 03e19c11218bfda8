"""The learner's per-batch message and how a rollout batch is cut into mini/micro-batches.

Runs in the learner ranks and in the one task that computes advantages over the whole
rollout batch (a Ray task next to the object store, or the caller's process). Arrays are
numpy so Ray shares them zero-copy. ``PPOBatch`` lives here rather than in
``workers/types.py`` because only the learner's ranks read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workers.config import LearnerConfig
from workers.learner import ppo
from workers.types import RewardBatch, TrajectoryBatch


@dataclass(frozen=True)
class PPOBatch:
    """Training targets of one rollout batch, aligned with ``TrajectoryBatch.response_ids``.

    - ``advantages``, ``returns``, ``old_logprobs`` (B, T) float32
    - ``ref_logprobs`` (B, T) float32, or None without a reference model
    - ``old_values`` (B, T) float32, or None without a critic (GRPO)
    - ``stats``: batch-level metrics (``ppo/advantages_mean``, ...)
    """

    advantages: np.ndarray
    returns: np.ndarray
    old_logprobs: np.ndarray
    ref_logprobs: np.ndarray | None
    old_values: np.ndarray | None
    stats: dict[str, float]


MIN_RETURN_VAR = 1e-4
"""Below this variance of the returns (a batch whose episodes all earned the same reward,
up to the KL term) explained variance measures nothing and is not reported."""


def build_ppo_batch(traj: TrajectoryBatch, rewards: RewardBatch, cfg: LearnerConfig,
                    old_logprobs: np.ndarray, ref_logprobs: np.ndarray | None,
                    values: np.ndarray | None, group_size: int = 1) -> PPOBatch:
    """KL-in-reward, advantages and returns over the whole batch (whitening needs all of it)."""
    mask = _tensor(traj.action_mask)
    old, ref = _tensor(old_logprobs), None if ref_logprobs is None else _tensor(ref_logprobs)
    vals = None if values is None else _tensor(values)
    advantages, returns = ppo.compute_advantages(
        _tensor(rewards.token_rewards), mask, old, ref, vals, estimator=cfg.advantage_estimator,
        kl_coef=cfg.kl_coef, kl_in_reward=not cfg.use_kl_loss, gamma=cfg.gamma, lam=cfg.lam,
        group_size=group_size, whiten=cfg.whiten_advantages)
    stats = {ppo.ADVANTAGES_MEAN: float(ppo.masked_mean(advantages, mask)),
             ppo.RETURNS_MEAN: float(ppo.masked_mean(returns, mask))}
    if vals is not None and float(ppo.masked_var(returns, mask)) > MIN_RETURN_VAR:
        stats[ppo.EXPLAINED_VARIANCE] = float(ppo.explained_variance(vals, returns, mask))
    if ref is not None:
        stats[KL_REF] = float(ppo.masked_mean(ppo.kl_estimate(old, ref, "k1"), mask))
    return PPOBatch(advantages=advantages.numpy(), returns=returns.numpy(),
                    old_logprobs=old.numpy(), ref_logprobs=None if ref is None else ref.numpy(),
                    old_values=None if vals is None else vals.numpy(), stats=stats)


KL_REF = "ppo/kl_ref"
"""Mean k1 KL of the rollout policy to the reference over action tokens."""


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))  # a copy: object-store arrays are read-only


def ppo_optimizer_steps(total_steps: int, samples_per_step: int, mini_batch_size: int, ppo_epochs: int) -> int:
    """Optimizer steps of a run of ``total_steps`` PPO steps of ``samples_per_step`` samples:
    one per mini-batch per epoch (the LR schedule's length in optimizer steps)."""
    return total_steps * ppo_epochs * max(1, samples_per_step // mini_batch_size)


def minibatches(batch_size: int, mini_batch_size: int, seed: int, shuffle: bool = True
                ) -> list[np.ndarray]:
    """Sample indices of each mini-batch (one optimizer step), the same on every rank."""
    if batch_size % mini_batch_size:
        raise ValueError(f"rollout batch of {batch_size} does not split into mini-batches "
                         f"of {mini_batch_size}")
    order = np.random.default_rng(seed).permutation(batch_size) if shuffle else np.arange(batch_size)
    return [np.sort(chunk) for chunk in np.split(order, batch_size // mini_batch_size)]
