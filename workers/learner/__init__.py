"""PPO learner: StePPO math (``ppo``), models with a value head, DeepSpeed engines, workers.

Runs in the learner ranks (Ray actors, CPU or GPU) and, for the advantage step, wherever
the whole rollout batch is. Importing this package loads torch only: deepspeed is
imported inside the engine functions, transformers when a worker class is first used.
"""

from __future__ import annotations

from typing import Any

from workers.learner.ppo import (
    ADVANTAGES_MEAN,
    APPROX_KL,
    CLIPFRAC,
    ENTROPY,
    EXPLAINED_VARIANCE,
    KL_LOSS,
    POLICY_LOSS,
    RETURNS_MEAN,
    VALUE_CLIPFRAC,
    VALUE_LOSS,
    PPOStats,
    actor_loss,
    compute_advantages,
    compute_gae,
    entropy_from_logits,
    explained_variance,
    group_normalized_advantages,
    kl_estimate,
    kl_penalized_rewards,
    make_stats,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_loss,
    sequence_scores,
    token_mean,
    value_loss,
)

_LAZY = {
    "LearnerWorker": "workers.learner.worker",
    "shard_indices": "workers.learner.worker",
}


def __getattr__(name: str) -> Any:
    """Worker classes load on first use, so that the math needs neither transformers nor deepspeed."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ADVANTAGES_MEAN",
    "APPROX_KL",
    "CLIPFRAC",
    "ENTROPY",
    "EXPLAINED_VARIANCE",
    "KL_LOSS",
    "POLICY_LOSS",
    "RETURNS_MEAN",
    "VALUE_CLIPFRAC",
    "VALUE_LOSS",
    "LearnerWorker",
    "PPOStats",
    "actor_loss",
    "compute_advantages",
    "compute_gae",
    "entropy_from_logits",
    "explained_variance",
    "group_normalized_advantages",
    "kl_estimate",
    "kl_penalized_rewards",
    "make_stats",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "sequence_scores",
    "shard_indices",
    "token_mean",
    "value_loss",
]
