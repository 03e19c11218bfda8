"""StePPO math: GAE over action tokens, KL terms, clipped losses, loss aggregation.

Pure tensor functions, no state, no distributed calls: they run wherever they are called
(the learner ranks and the driver-side advantage step, CPU or GPU). Shapes use ``B``
samples and ``T`` response tokens; ``action_mask`` (B, T) is 1 on tokens the policy
generated and 0 on inserted observation tokens and padding (DESIGN.md 4, PPO).

References: PPO (Schulman et al. 2017, arXiv 1707.06347) eq. 7 (clipped surrogate);
GAE (Schulman et al. 2015, arXiv 1506.02438) eq. 16; StepSearch (arXiv 2505.15107)
section 3: GAE whose time steps are the action tokens only, KL-in-reward; dual clip
(Ye et al. 2020, arXiv 1912.09729) eq. 5; the k1/k2/k3 KL estimators (J. Schulman,
"Approximating KL divergence", 2020); GRPO (Shao et al. 2024, arXiv 2402.03300) 4.1.2;
off-policy correction for asynchronous rollout: truncated importance sampling
(TIS, Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training") and AReaL's decoupled PPO (Fu et al. 2025, arXiv 2505.24298, eq. 5).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]
OffPolicyCorrection = Literal["none", "tis", "decoupled"]

POLICY_LOSS = "ppo/policy_loss"
VALUE_LOSS = "ppo/value_loss"
APPROX_KL = "ppo/approx_kl"
CLIPFRAC = "ppo/clipfrac"
VALUE_CLIPFRAC = "ppo/value_clipfrac"
ENTROPY = "ppo/entropy"
KL_LOSS = "ppo/kl_loss"
EXPLAINED_VARIANCE = "ppo/explained_variance"
ADVANTAGES_MEAN = "ppo/advantages_mean"
RETURNS_MEAN = "ppo/returns_mean"
IS_WEIGHT_MEAN = "ppo/is_weight_mean"
IS_CAPPED_FRAC = "ppo/is_capped_frac"


class PPOStats(NamedTuple):
    """Scalar diagnostics of one PPO (mini-)batch; ``as_dict`` keys are the metric names.

    Token means over action tokens, with the same normalisation as the losses (so they
    add up over micro-batches and ranks like the losses do).
    """

    policy_loss: Tensor
    value_loss: Tensor
    approx_kl: Tensor
    clipfrac: Tensor
    entropy: Tensor
    explained_variance: Tensor
    advantages_mean: Tensor
    returns_mean: Tensor

    def as_dict(self) -> dict[str, float]:
        """Python floats under the ``ppo/...`` metric keys."""
        keys = (POLICY_LOSS, VALUE_LOSS, APPROX_KL, CLIPFRAC, ENTROPY, EXPLAINED_VARIANCE,
                ADVANTAGES_MEAN, RETURNS_MEAN)
        return {k: float(v) for k, v in zip(keys, self, strict=True)}


# ----------------------------------------------------------------------------- masked reductions


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``x`` where ``mask`` is 1 (a scalar)."""
    return (x * mask).sum()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the tokens where ``mask`` is 1 (0 when the mask is empty)."""
    return masked_sum(x, mask) / mask.sum().clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the masked tokens (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_sum((x - mean) ** 2, mask) / n.clamp(min=1)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked tokens; unmasked tokens come out as 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    white = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        white = white + mean
    return white * mask


def token_mean(x: Tensor, mask: Tensor, num_tokens: float | Tensor | None = None) -> Tensor:
    """Loss aggregation: sum of ``x`` over action tokens divided by ``num_tokens``.

    ``num_tokens`` is the number of action tokens of the whole mini-batch (all ranks, all
    micro-batches), so the micro-batch losses of one optimizer step *add up* to the
    token mean of the mini-batch: splitting the batch does not change the gradient. When
    None, the micro-batch's own count is used (only right for an unsplit batch).
    """
    if num_tokens is None:
        num_tokens = mask.sum().clamp(min=1)
    return masked_sum(x, mask) / num_tokens


# ----------------------------------------------------------------------------- KL


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: KLEstimator = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.  # (B, T)

    k1 = log r with log r = logprobs - ref_logprobs (unbiased, can be negative);
    k2 = (log r)^2 / 2; k3 = exp(-log r) - 1 + log r (unbiased, >= 0, low variance).
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        # Clamp before exp so that a far-off token cannot produce inf (the value is then
        # already ~e^20, which the loss treats as huge anyway).
        neg = (-log_ratio).clamp(max=20.0)
        return torch.exp(neg) - 1.0 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}: use k1, k2 or k3")


def kl_penalized_rewards(token_rewards: Tensor, logprobs: Tensor, ref_logprobs: Tensor,
                         action_mask: Tensor, kl_coef: float) -> Tensor:
    """r_t - beta * k1_t on action tokens; observation tokens keep no reward.  # (B, T)

    StePPO puts the KL to the frozen reference into the token reward (coef 0.001).
    """
    kl = kl_estimate(logprobs, ref_logprobs, "k1")
    return (token_rewards - kl_coef * kl) * action_mask


# ----------------------------------------------------------------------------- advantages


def compute_gae(rewards: Tensor, values: Tensor, action_mask: Tensor, gamma: float = 1.0,
                lam: float = 1.0) -> tuple[Tensor, Tensor]:
    """GAE whose time steps are the action tokens only. Returns (advantages, returns).

    delta_t = r_t + gamma * V(next action token) - V_t;  A_t = delta_t + gamma*lam*A_next,
    where "next" skips observation tokens (action_mask 0): their rewards and values do
    not enter and their advantages and returns are 0. After the last action token the
    episode ends (V = 0). Equals plain GAE on the sequence with observations deleted.
    All inputs and both outputs are (B, T).
    """
    mask = action_mask.to(values.dtype)
    rewards, values = rewards.detach() * mask, values.detach() * mask
    B, T = values.shape
    next_value = values.new_zeros(B)  # (B,) value of the next action token
    next_adv = values.new_zeros(B)  # (B,) advantage of the next action token
    advantages = torch.zeros_like(values)  # (B, T)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        # Observation tokens carry the running (next_value, next_adv) through unchanged.
        next_adv = m * adv_t + (1 - m) * next_adv
        next_value = m * values[:, t] + (1 - m) * next_value
        advantages[:, t] = m * adv_t
    returns = (advantages + values) * mask
    return advantages, returns


def group_normalized_advantages(scores: Tensor, action_mask: Tensor, group_size: int,
                                eps: float = 1e-6) -> Tensor:
    """GRPO: (score - group mean) / (group std + eps), broadcast to action tokens. # (B, T)

    ``scores`` (B,) are sequence scores; the ``group_size`` samples of one prompt are
    adjacent rows. No critic: returns are taken equal to these advantages by callers.
    """
    B = scores.shape[0]
    if group_size < 1 or B % group_size:
        raise ValueError(f"batch of {B} does not split into groups of {group_size}")
    grouped = scores.view(B // group_size, group_size)  # (G, n)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    normed = ((grouped - mean) / (std + eps)).view(B, 1)  # (B, 1)
    return normed * action_mask.to(scores.dtype)


def sequence_scores(token_rewards: Tensor, action_mask: Tensor) -> Tensor:
    """Sum of the token rewards over the action tokens of each sample.  # (B,)"""
    return (token_rewards * action_mask).sum(dim=1)


# ----------------------------------------------------------------------------- losses


def behaviour_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, action_mask: Tensor,
                      correction: OffPolicyCorrection, cap: float) -> tuple[Tensor, Tensor]:
    """Per-token importance weight of the PPO loss, and where it was capped.  # (B, T) each

    w = pi_old / pi_behav = exp(old_logprobs - rollout_logprobs): ``old`` is the learner's
    policy before this update (PPO's denominator, AReaL's proximal policy), ``behav`` the
    possibly older policy that sampled the tokens. ``tis`` truncates: min(w, cap);
    ``decoupled`` (AReaL) keeps w and drops (weight 0) the tokens where w > cap. The
    second tensor is 1 on action tokens whose w exceeded ``cap``.
    """
    if correction not in ("tis", "decoupled"):
        raise ValueError(f"unknown off-policy correction {correction!r}: use tis or decoupled")
    mask = action_mask.to(old_logprobs.dtype)
    # Clamp before exp (as in kl_estimate): a far-off token would give inf, and inf * 0 = nan.
    ratio = torch.exp((old_logprobs - rollout_logprobs).clamp(max=20.0))
    capped = (ratio > cap).to(ratio.dtype)
    weight = ratio.clamp(max=cap) if correction == "tis" else ratio * (1.0 - capped)
    return weight.detach() * mask, capped * mask


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, action_mask: Tensor,
                clip_ratio: float = 0.2, dual_clip: float | None = None,
                num_tokens: float | Tensor | None = None,
                token_weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate (PPO eq. 7), as a loss. Returns (loss, clipfrac, approx_kl).

    ratio = exp(logprobs - old_logprobs); per token
    L = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)), and with dual clip
    L = min(L, -A * c) where A < 0. ``token_weights`` (``behaviour_weights``) multiply
    each token's L (off-policy correction). ``clipfrac`` counts tokens where the clipped
    term won; ``approx_kl`` is the k3 estimate of KL(old || new). All three are token
    means aggregated with ``num_tokens`` (see ``token_mean``).
    """
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        loss = torch.where(advantages < 0, torch.minimum(loss, -advantages * dual_clip), loss)
    if token_weights is not None:
        loss = loss * token_weights
    with torch.no_grad():
        clipfrac = token_mean((clipped > unclipped).to(loss.dtype), action_mask, num_tokens)
        approx_kl = token_mean(kl_estimate(old_logprobs, logprobs, "k3"), action_mask, num_tokens)
    return token_mean(loss, action_mask, num_tokens), clipfrac, approx_kl


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, action_mask: Tensor,
               value_clip: float | None = 0.5,
               num_tokens: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clip - R)^2). Returns (loss, clipfrac).

    V_clip = old_values + clip(V - old_values, -c, c) keeps the critic near the values it
    had at rollout time; ``value_clip`` None gives the plain squared error.
    """
    unclipped = (values - returns) ** 2
    if value_clip is None:
        loss = unclipped
        clipfrac = values.new_zeros(())
    else:
        v_clip = old_values + (values - old_values).clamp(-value_clip, value_clip)
        clipped = (v_clip - returns) ** 2
        loss = torch.maximum(unclipped, clipped)
        with torch.no_grad():
            clipfrac = token_mean((clipped > unclipped).to(loss.dtype), action_mask, num_tokens)
    return 0.5 * token_mean(loss, action_mask, num_tokens), clipfrac


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position: (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def explained_variance(values: Tensor, returns: Tensor, action_mask: Tensor) -> Tensor:
    """1 - Var[R - V] / Var[R] over action tokens (1 is a perfect critic, 0 a constant)."""
    var_r = masked_var(returns, action_mask)
    return 1.0 - masked_var(returns - values, action_mask) / var_r.clamp(min=1e-8)


def actor_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, action_mask: Tensor,
               entropy: Tensor, *, clip_ratio: float = 0.2, dual_clip: float | None = None,
               entropy_coef: float = 0.001, ref_logprobs: Tensor | None = None,
               kl_loss_coef: float = 0.0, num_tokens: float | Tensor | None = None,
               rollout_logprobs: Tensor | None = None, correction: OffPolicyCorrection = "none",
               is_cap: float = 2.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Policy objective: clipped surrogate - entropy bonus (+ k3 KL loss when asked).

    Returns the scalar loss and its parts (``ppo/...`` keys), all aggregated with
    ``num_tokens``. ``ref_logprobs`` with ``kl_loss_coef`` > 0 is the KL-loss variant
    (use it *instead of* the KL in the reward). ``correction`` tis/decoupled weights the
    surrogate by ``behaviour_weights(old_logprobs, rollout_logprobs, ...)`` and reports
    the weight's token mean and the share of capped tokens.
    """
    weights = capped = None
    if correction != "none":
        if rollout_logprobs is None:
            raise ValueError(f"off-policy correction {correction!r} needs rollout_logprobs")
        weights, capped = behaviour_weights(old_logprobs, rollout_logprobs, action_mask, correction, is_cap)
    pg, clipfrac, approx_kl = policy_loss(logprobs, old_logprobs, advantages, action_mask,
                                          clip_ratio, dual_clip, num_tokens, weights)
    ent = token_mean(entropy, action_mask, num_tokens)
    loss = pg - entropy_coef * ent
    parts = {POLICY_LOSS: pg.detach(), CLIPFRAC: clipfrac, APPROX_KL: approx_kl,
             ENTROPY: ent.detach()}
    if weights is not None and capped is not None:
        parts[IS_WEIGHT_MEAN] = token_mean(weights, action_mask, num_tokens)
        parts[IS_CAPPED_FRAC] = token_mean(capped, action_mask, num_tokens)
    if ref_logprobs is not None and kl_loss_coef > 0:
        kl = token_mean(kl_estimate(logprobs, ref_logprobs, "k3"), action_mask, num_tokens)
        loss = loss + kl_loss_coef * kl
        parts[KL_LOSS] = kl.detach()
    return loss, parts


# ----------------------------------------------------------------------------- one rollout batch


def compute_advantages(token_rewards: Tensor, action_mask: Tensor, old_logprobs: Tensor,
                       ref_logprobs: Tensor | None, values: Tensor | None, *,
                       estimator: str = "gae", kl_coef: float = 0.001, kl_in_reward: bool = True,
                       gamma: float = 1.0, lam: float = 1.0, group_size: int = 1,
                       whiten: bool = True) -> tuple[Tensor, Tensor]:
    """From token rewards to (advantages, returns) for a whole rollout batch.  # (B, T)

    StePPO (estimator "gae"): KL-penalised rewards, GAE over action tokens, whitening.
    GRPO ("grpo"): group-normalised sequence scores; returns equal advantages.
    Whitening needs the statistics of the whole batch, so this runs once per rollout
    batch (not per rank).
    """
    mask = action_mask.to(old_logprobs.dtype)
    rewards = token_rewards * mask
    if kl_in_reward and ref_logprobs is not None and kl_coef > 0:
        rewards = kl_penalized_rewards(token_rewards, old_logprobs, ref_logprobs, mask, kl_coef)
    if estimator == "gae":
        if values is None:
            raise ValueError("estimator 'gae' needs critic values")
        advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
        if whiten:
            advantages = masked_whiten(advantages, mask)
        return advantages, returns
    if estimator == "grpo":
        advantages = group_normalized_advantages(sequence_scores(rewards, mask), mask, group_size)
        return advantages, advantages.clone()
    raise ValueError(f"unknown advantage estimator {estimator!r}: use gae or grpo")


def make_stats(parts: dict[str, Tensor], *, value_loss: Tensor | None = None,
               values: Tensor | None = None, advantages: Tensor, returns: Tensor,
               action_mask: Tensor) -> PPOStats:
    """Collect one batch's numbers into ``PPOStats`` (value terms are 0 without a critic)."""
    zero = advantages.new_zeros(())
    ev = explained_variance(values, returns, action_mask) if values is not None else zero
    return PPOStats(
        policy_loss=parts.get(POLICY_LOSS, zero), value_loss=zero if value_loss is None else value_loss,
        approx_kl=parts.get(APPROX_KL, zero), clipfrac=parts.get(CLIPFRAC, zero),
        entropy=parts.get(ENTROPY, zero), explained_variance=ev,
        advantages_mean=masked_mean(advantages, action_mask),
        returns_mean=masked_mean(returns, action_mask))
