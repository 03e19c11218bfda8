"""Off-policy correction of the PPO loss for asynchronous rollout, by hand.

One episode of four tokens, the third an observation: old (learner) log-probs
[0, ln 3, 5, ln 0.5] against rollout log-probs [0, 0, 0, 0], so the importance weights
pi_old / pi_behav are [1, 3, e^5 (observation: ignored), 0.5]; with cap 2:
tis -> [1, 2, 0, 0.5] (the 3 truncated), decoupled -> [1, 0, 0, 0.5] (the 3 dropped).
"""

from __future__ import annotations

import math

import pytest
import torch

from workers.learner.ppo import (
    IS_CAPPED_FRAC,
    IS_WEIGHT_MEAN,
    POLICY_LOSS,
    actor_loss,
    behaviour_weights,
    policy_loss,
)

MASK = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
OLD = torch.tensor([[0.0, math.log(3.0), 5.0, math.log(0.5)]])
ROLLOUT = torch.zeros(1, 4)
ADV = torch.tensor([[1.0, 1.0, 9.0, -4.0]])  # the 9 sits on the observation


def test_tis_truncates_the_weight_at_the_cap() -> None:
    w, capped = behaviour_weights(OLD, ROLLOUT, MASK, "tis", cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 0.0, 0.5]]))
    torch.testing.assert_close(capped, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_decoupled_drops_the_tokens_above_the_cap() -> None:
    w, capped = behaviour_weights(OLD, ROLLOUT, MASK, "decoupled", cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.0, 0.5]]))
    torch.testing.assert_close(capped, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_on_policy_tokens_get_weight_one() -> None:
    w, capped = behaviour_weights(OLD, OLD, MASK, "tis", cap=2.0)
    torch.testing.assert_close(w, MASK)
    assert float(capped.sum()) == 0.0


def test_a_far_off_token_gives_no_inf_or_nan() -> None:
    w, _ = behaviour_weights(torch.tensor([[0.0]]), torch.tensor([[-1e4]]), torch.ones(1, 1), "decoupled", 2.0)
    assert torch.isfinite(w).all() and float(w) == 0.0


def test_an_unknown_correction_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown off-policy correction 'is'"):
        behaviour_weights(OLD, ROLLOUT, MASK, "is", cap=2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("correction", "loss", "weight_mean"), [
    # logprobs == old: PPO's ratio is 1, so the per-token loss is -A * w over 3 action tokens.
    ("none", (-1 - 1 + 4) / 3, None),             # [-1, -1, 4]
    ("tis", (-1 - 2 + 4 * 0.5) / 3, 3.5 / 3),      # [-1, -2, 2]
    ("decoupled", (-1 - 0 + 4 * 0.5) / 3, 1.5 / 3),  # [-1, 0, 2]
])
def test_the_weighted_loss_and_its_statistics(correction: str, loss: float, weight_mean: float | None) -> None:
    logprobs = OLD.clone().requires_grad_(True)
    total, parts = actor_loss(logprobs, OLD, ADV, MASK, torch.zeros(1, 4), entropy_coef=0.0,
                              rollout_logprobs=ROLLOUT, correction=correction,  # type: ignore[arg-type]
                              is_cap=2.0)
    assert float(parts[POLICY_LOSS]) == pytest.approx(loss)
    if weight_mean is None:
        assert IS_WEIGHT_MEAN not in parts and IS_CAPPED_FRAC not in parts
    else:
        assert float(parts[IS_WEIGHT_MEAN]) == pytest.approx(weight_mean)
        assert float(parts[IS_CAPPED_FRAC]) == pytest.approx(1 / 3)
    total.backward()
    # d/dlogp of -A * w * exp(logp - old) at ratio 1 is -A * w (the weight carries no gradient).
    w = {"none": [1.0, 1.0, 0.0, 1.0], "tis": [1.0, 2.0, 0.0, 0.5], "decoupled": [1.0, 0.0, 0.0, 0.5]}[correction]
    expected = torch.tensor([[-a * wi / 3 for a, wi in zip(ADV[0].tolist(), w, strict=True)]])
    torch.testing.assert_close(logprobs.grad, expected)


def test_weights_enter_after_the_clip() -> None:
    """ratio e^0.5 > 1.2 with A = 1: the clipped term -1.2 wins, then times w = 2 (tis)."""
    loss, clipfrac, _ = policy_loss(torch.tensor([[0.5]]), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                                    token_weights=torch.tensor([[2.0]]))
    assert float(loss) == pytest.approx(-2.4) and float(clipfrac) == 1.0


def test_none_ignores_the_rollout_logprobs_and_matches_plain_ppo() -> None:
    logprobs = OLD + 0.1
    plain, _ = actor_loss(logprobs, OLD, ADV, MASK, torch.zeros(1, 4))
    same, _ = actor_loss(logprobs, OLD, ADV, MASK, torch.zeros(1, 4), rollout_logprobs=ROLLOUT + 7.0)
    assert torch.equal(plain, same)


def test_a_correction_without_rollout_logprobs_is_refused() -> None:
    with pytest.raises(ValueError, match="needs rollout_logprobs"):
        actor_loss(OLD, OLD, ADV, MASK, torch.zeros(1, 4), correction="tis")
