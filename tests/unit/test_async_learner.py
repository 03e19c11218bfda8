"""The learner with the off-policy correction (plain-torch engine, no Ray).

The first test pins the synchronous update: the numbers were printed by the same code on
``main`` before the off-policy correction (same seed, one thread), so ``off_policy_correction=none`` stays
bit-identical to the loop as it was.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.support.learner_batches import make_batch, make_tiny_model
from workers.config import LearnerConfig
from workers.learner import ppo
from workers.learner.data import build_ppo_batch
from workers.learner.worker import LearnerWorker
from workers.types import TrajectoryBatch

CFG = LearnerConfig(engine="torch", mini_batch_size=4, micro_batch_size=2, actor_lr=1e-3, critic_lr=1e-3)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.set_num_threads(1)
    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"))


def _update(model_path: str, cfg: LearnerConfig, behaviour: str = "zeros") -> tuple[dict[str, float], np.ndarray]:
    """One update on the shared test batch; ``behaviour``: the rollout log-probs (``zeros`` as
    built, ``old`` equal to the learner's old log-probs: on-policy)."""
    traj, reward = make_batch()
    worker = LearnerWorker(cfg, model_path, roles=("policy", "critic"), seed=3)
    worker.init_distributed()
    out = worker.compute(traj)
    if behaviour == "old":
        traj = replace(traj, rollout_logprobs=out["old_logprobs"].copy())
    targets = build_ppo_batch(traj, reward, cfg, out["old_logprobs"], out["ref_logprobs"], out["values"])
    metrics = worker.ppo_update(traj, targets)
    return metrics, worker.parameters_vector()


def test_without_correction_the_update_is_the_one_main_computed(model_path: str) -> None:
    metrics, params = _update(model_path, CFG)
    assert metrics[ppo.POLICY_LOSS] == 0.015317529439926147
    assert metrics[ppo.VALUE_LOSS] == 0.7739671915769577
    assert float(params.astype(np.float64).sum()) == 670.5679466066904
    assert ppo.IS_WEIGHT_MEAN not in metrics


@pytest.mark.parametrize("correction", ["tis", "decoupled"])
def test_on_policy_batches_get_weight_one_and_the_plain_update(model_path: str, correction: str) -> None:
    plain, plain_params = _update(model_path, CFG)
    corrected, params = _update(model_path, replace(CFG, off_policy_correction=correction), behaviour="old")
    assert corrected[ppo.IS_WEIGHT_MEAN] == pytest.approx(1.0, abs=1e-6)
    assert corrected[ppo.IS_CAPPED_FRAC] == 0.0
    assert corrected[ppo.POLICY_LOSS] == pytest.approx(plain[ppo.POLICY_LOSS], rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(params, plain_params, atol=1e-6)


def test_a_far_off_behaviour_policy_is_capped_and_changes_the_update(model_path: str) -> None:
    """Rollout log-probs of 0 (probability 1) against the random policy's ~ -6: pi_old/pi_behav
    is ~e^-6 on every token, far below the cap; with tis the step shrinks accordingly."""
    traj: TrajectoryBatch = make_batch()[0]
    assert not traj.rollout_logprobs.any()
    plain, plain_params = _update(model_path, CFG)
    tis, params = _update(model_path, replace(CFG, off_policy_correction="tis"))
    assert 0.0 < tis[ppo.IS_WEIGHT_MEAN] < 0.05 and tis[ppo.IS_CAPPED_FRAC] == 0.0
    assert abs(tis[ppo.POLICY_LOSS]) < abs(plain[ppo.POLICY_LOSS])
    assert not np.allclose(params, plain_params)
