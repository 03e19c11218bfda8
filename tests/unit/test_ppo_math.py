"""StePPO math with hand-computed values and invariances (workers/learner/ppo.py)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from workers.learner import (
    compute_advantages,
    compute_gae,
    group_normalized_advantages,
    kl_estimate,
    kl_penalized_rewards,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    token_mean,
    value_loss,
)
from workers.learner.ppo import actor_loss, explained_variance, make_stats

# One episode: action, action, observation, observation, action, action.
MASK = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 1.0]])
REWARDS = torch.tensor([[0.0, 0.5, 9.0, 9.0, 0.0, 1.0]])  # the 9s sit on observations
VALUES = torch.tensor([[0.1, 0.2, 7.0, 7.0, 0.3, 0.4]])  # the 7s too


def plain_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Textbook GAE on one sequence without observation tokens (the reference)."""
    adv, nxt_v, nxt_a = [0.0] * len(rewards), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * nxt_v - values[t]
        nxt_a = delta + gamma * lam * nxt_a
        nxt_v = values[t]
        adv[t] = nxt_a
    return adv


def test_gae_gamma_lambda_one_is_reward_to_go_over_action_tokens() -> None:
    adv, ret = compute_gae(REWARDS, VALUES, MASK)
    # returns = sum of the action-token rewards from t on: 1.5, 1.5, -, -, 1, 1
    torch.testing.assert_close(ret, torch.tensor([[1.5, 1.5, 0.0, 0.0, 1.0, 1.0]]))
    torch.testing.assert_close(adv, torch.tensor([[1.4, 1.3, 0.0, 0.0, 0.7, 0.6]]))


def test_gae_hand_computed_with_discount() -> None:
    # Compressed sequence r = [0, .5, 0, 1], V = [.1, .2, .3, .4], gamma .9, lam .8:
    # t3: d = 1 - .4 = .6                        A = .6
    # t2: d = .9*.4 - .3 = .06                   A = .06 + .72*.6 = .492
    # t1: d = .5 + .9*.3 - .2 = .57              A = .57 + .72*.492 = .92424
    # t0: d = .9*.2 - .1 = .08                   A = .08 + .72*.92424 = .7454528
    adv, ret = compute_gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.8)
    expected = torch.tensor([[0.7454528, 0.92424, 0.0, 0.0, 0.492, 0.6]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, (expected + VALUES) * MASK)


def test_gae_equals_plain_gae_with_observations_deleted() -> None:
    gen = torch.Generator().manual_seed(0)
    B, T = 5, 17
    mask = (torch.rand(B, T, generator=gen) > 0.4).float()
    mask[:, -3:] = 0.0  # right padding
    rewards, values = torch.randn(B, T, generator=gen), torch.randn(B, T, generator=gen)
    adv, _ = compute_gae(rewards, values, mask, gamma=0.95, lam=0.9)
    for b in range(B):
        keep = mask[b].bool()
        ref = plain_gae(rewards[b][keep].tolist(), values[b][keep].tolist(), 0.95, 0.9)
        torch.testing.assert_close(adv[b][keep], torch.tensor(ref))
        assert torch.all(adv[b][~keep] == 0)


def test_ppo_clipping_cases() -> None:
    # ratio 1.5 / 0.5 with advantage +1 / -1; eps 0.2.
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    old = torch.zeros(1, 4)
    logp = torch.log(ratio).requires_grad_()
    mask = torch.ones(1, 4)
    loss, clipfrac, _ = policy_loss(logp, old, adv, mask, clip_ratio=0.2)
    # per token: max(-1.5, -1.2) = -1.2 (clipped), max(-.5, -.8) = -.5,
    #            max(1.5, 1.2) = 1.5,             max(.5, .8) = .8 (clipped)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)
    assert clipfrac.item() == pytest.approx(0.5)
    loss.backward()
    # d/dlogp of -A*ratio is -A*ratio / 4; the clipped tokens get no gradient.
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.5, 1.5, 0.0]]) / 4)


def test_dual_clip_bounds_negative_advantages() -> None:
    logp, old = torch.log(torch.tensor([[5.0, 5.0]])), torch.zeros(1, 2)
    adv, mask = torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2)
    plain, _, _ = policy_loss(logp, old, adv, mask, 0.2)
    dual, _, _ = policy_loss(logp, old, adv, mask, 0.2, dual_clip=3.0)
    # A<0, ratio 5: max(5, 1.2) = 5 -> dual clip min(5, 3) = 3; A>0: max(-5, -1.2) = -1.2.
    assert plain.item() == pytest.approx((5.0 - 1.2) / 2)
    assert dual.item() == pytest.approx((3.0 - 1.2) / 2)
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, 0.2, dual_clip=0.5)


def test_value_clipping() -> None:
    old = torch.zeros(1, 3)
    values = torch.tensor([[1.0, 1.0, 0.2]])
    returns = torch.tensor([[2.0, 0.8, 0.0]])
    loss, clipfrac = value_loss(values, old, returns, torch.ones(1, 3), value_clip=0.5)
    # V_clip = [.5, .5, .2]; max((V-R)^2, (V_clip-R)^2) = [2.25, .09, .04]
    assert loss.item() == pytest.approx(0.5 * (2.25 + 0.09 + 0.04) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    unclipped, _ = value_loss(values, old, returns, torch.ones(1, 3), value_clip=None)
    assert unclipped.item() == pytest.approx(0.5 * (1.0 + 0.04 + 0.04) / 3)


def test_kl_estimators_hand_values() -> None:
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log r = log 2
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")  # type: ignore[arg-type]


def test_k1_and_k3_are_unbiased_for_the_exact_kl() -> None:
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    exact = (p * (p / q).log()).sum()
    for kind in ("k1", "k3"):
        expectation = (p * kl_estimate(p.log(), q.log(), kind)).sum()  # E_{x~p}[k(x)]
        torch.testing.assert_close(expectation, exact)
    assert torch.all(kl_estimate(p.log(), q.log(), "k3") >= 0)


def test_kl_penalty_in_reward_only_on_action_tokens() -> None:
    logp = torch.full((1, 6), math.log(0.5))
    ref = torch.full((1, 6), math.log(0.25))
    out = kl_penalized_rewards(REWARDS, logp, ref, MASK, kl_coef=0.001)
    expected = (REWARDS - 0.001 * math.log(2)) * MASK
    torch.testing.assert_close(out, expected)


def _random_batch(seed: int, B: int = 8, T: int = 12) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(B, T, generator=gen) > 0.3).float()
    mask[:, -2:] = 0.0
    mask[0] = 0.0  # a sample with no action tokens must not break anything
    return {
        "logprobs": -torch.rand(B, T, generator=gen), "old": -torch.rand(B, T, generator=gen),
        "adv": torch.randn(B, T, generator=gen), "mask": mask,
        "entropy": torch.rand(B, T, generator=gen), "values": torch.randn(B, T, generator=gen),
        "returns": torch.randn(B, T, generator=gen)}


@pytest.mark.parametrize("splits", [[8], [4, 4], [1, 2, 5], [3, 3, 2]])
def test_loss_aggregation_is_split_invariant(splits: list[int]) -> None:
    d = _random_batch(1)
    n_global = d["mask"].sum()

    def loss_and_grad(chunks: list[int]) -> tuple[float, torch.Tensor, torch.Tensor]:
        logp = d["logprobs"].clone().requires_grad_()
        values = d["values"].clone().requires_grad_()
        total, start = 0.0, 0
        for size in chunks:
            s = slice(start, start + size)
            start += size
            a_loss, _ = actor_loss(logp[s], d["old"][s], d["adv"][s], d["mask"][s], d["entropy"][s],
                                   dual_clip=3.0, num_tokens=n_global)
            v_loss, _ = value_loss(values[s], d["values"][s] * 0.9, d["returns"][s], d["mask"][s],
                                   num_tokens=n_global)
            (a_loss + v_loss).backward()  # gradients accumulate as over micro-batches/ranks
            total += float((a_loss + v_loss).detach())
        assert logp.grad is not None and values.grad is not None
        return total, logp.grad, values.grad

    full_loss, full_glogp, full_gval = loss_and_grad([8])
    loss, glogp, gval = loss_and_grad(splits)
    assert loss == pytest.approx(full_loss, rel=1e-6)
    torch.testing.assert_close(glogp, full_glogp)
    torch.testing.assert_close(gval, full_gval)


def test_per_micro_batch_mean_would_not_be_split_invariant() -> None:
    """Why num_tokens is passed in: the micro-batch's own token count weighs samples wrongly."""
    d = _random_batch(2)
    full = token_mean(d["adv"], d["mask"])
    halves = [token_mean(d["adv"][s], d["mask"][s]) for s in (slice(0, 3), slice(3, 8))]
    assert float(sum(halves)) / 2 != pytest.approx(float(full))
    n = d["mask"].sum()
    split = [token_mean(d["adv"][s], d["mask"][s], n) for s in (slice(0, 3), slice(3, 8))]
    assert float(sum(split)) == pytest.approx(float(full))


def test_masked_whiten_ignores_observation_tokens() -> None:
    d = _random_batch(3)
    x, mask = d["adv"], d["mask"]
    white = masked_whiten(x, mask)
    assert masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(white, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert torch.all(white[mask == 0] == 0)
    poked = x.clone()
    poked[mask == 0] = 1e6  # values on observations must not move the statistics
    torch.testing.assert_close(masked_whiten(poked, mask), white)


def test_group_normalized_advantages() -> None:
    scores = torch.tensor([1.0, 0.0, 0.5, 0.5])
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    adv = group_normalized_advantages(scores, mask, group_size=2)
    # group 1: mean .5, std (unbiased) sqrt(.5); group 2: all equal -> 0
    s = 0.5 / math.sqrt(0.5)
    expected = torch.tensor([[s], [-s], [0.0], [0.0]]) * mask
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        group_normalized_advantages(scores, mask, group_size=3)


def test_compute_advantages_both_estimators() -> None:
    logp = torch.full((1, 6), math.log(0.5))
    ref = logp.clone()  # no KL: rewards pass through
    adv, ret = compute_advantages(REWARDS, MASK, logp, ref, VALUES, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[1.4, 1.3, 0.0, 0.0, 0.7, 0.6]]))
    torch.testing.assert_close(ret, torch.tensor([[1.5, 1.5, 0.0, 0.0, 1.0, 1.0]]))
    white, _ = compute_advantages(REWARDS, MASK, logp, ref, VALUES, whiten=True)
    assert masked_mean(white, MASK).item() == pytest.approx(0.0, abs=1e-6)
    rewards2 = torch.cat([REWARDS, torch.zeros(1, 6)])
    mask2, logp2 = torch.cat([MASK, MASK]), torch.cat([logp, logp])
    g_adv, g_ret = compute_advantages(rewards2, mask2, logp2, None, None, estimator="grpo",
                                      group_size=2)
    # scores 1.5 and 0 -> +-1/sqrt(2) after group normalisation
    assert g_adv[0, 0].item() == pytest.approx(1 / math.sqrt(2), rel=1e-5)
    assert g_adv[1, 0].item() == pytest.approx(-1 / math.sqrt(2), rel=1e-5)
    torch.testing.assert_close(g_ret, g_adv)
    with pytest.raises(ValueError):
        compute_advantages(REWARDS, MASK, logp, ref, None)


def test_kl_loss_and_stats() -> None:
    d = _random_batch(4)
    base, _ = actor_loss(d["logprobs"], d["old"], d["adv"], d["mask"], d["entropy"])
    ref = d["logprobs"] - 0.3
    with_kl, parts = actor_loss(d["logprobs"], d["old"], d["adv"], d["mask"], d["entropy"],
                                ref_logprobs=ref, kl_loss_coef=0.1)
    expected_kl = token_mean(kl_estimate(d["logprobs"], ref, "k3"), d["mask"])
    torch.testing.assert_close(with_kl - base, 0.1 * expected_kl)
    stats = make_stats(parts, values=d["returns"], advantages=d["adv"], returns=d["returns"],
                       action_mask=d["mask"])
    assert stats.explained_variance.item() == pytest.approx(1.0)
    assert set(stats.as_dict()) >= {"ppo/approx_kl", "ppo/clipfrac", "ppo/policy_loss"}
    assert explained_variance(torch.zeros(8, 12), d["returns"], d["mask"]).item() == pytest.approx(
        0.0, abs=1e-6)


def test_importing_learner_leaves_out_deepspeed_and_ray() -> None:
    code = ("import sys, workers.learner; "
            "print(any(m in sys.modules for m in ('ray', 'deepspeed', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
