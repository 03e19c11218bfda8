"""The asynchronous StePPO loop on a local Ray cluster: the version schedule,
resume after a kill, a killed rollout actor."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_trainer import TINY, _pids, _policy_weights, _train
from workers.tracking import read_metrics

pytestmark = pytest.mark.integration

ASYNC = ["trainer.async_rollout=true", "rollout.engine=hf"]


@pytest.fixture(scope="module")
def common(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("async_trainer")
    return [*TINY, f"data.output_dir={root / 'data'}", f"model.build_dir={root / 'models'}"]


def test_killed_and_resumed_async_run_ends_where_an_uninterrupted_run_ends(common: list[str], tmp_path: Path) -> None:
    """k=1: step s trains on the batch of version max(0, s-2); the checkpoint at step 2 carries
    step 3's finished batch, so the resumed run trains on exactly what the straight one did."""
    args = [*common, *ASYNC, "trainer.total_steps=4", "trainer.save_every=2", "seed=5", "trainer.eval_start=false"]
    straight = _train(args, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    records = [r for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if r["step"] > 0]
    assert [r["async/policy_version"] for r in records] == [0, 0, 1, 2]
    assert [r["async/staleness"] for r in records] == [0, 1, 1, 1]
    assert all(r["async/regenerated"] == 0 for r in records)
    assert (tmp_path / "straight" / "checkpoints" / "step_000002" / "async_pending.pkl").exists()

    killed = _train(args, tmp_path / "resumed", kill_after_checkpoint=2)
    assert not (tmp_path / "resumed" / "checkpoints" / "step_000004").exists(), killed.stdout[-2000:]
    resumed = _train([*args, "trainer.resume=auto"], tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = _policy_weights(tmp_path / "straight" / "checkpoints" / "step_000004")
    b = _policy_weights(tmp_path / "resumed" / "checkpoints" / "step_000004")
    start = _policy_weights(tmp_path / "straight" / "checkpoints" / "step_000002")
    assert any(not np.array_equal(a[k], start[k]) for k in a)  # training moved the weights
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    again = {r["step"]: r for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")}
    for r in records[2:]:  # steps 3 and 4: the same batches, rewards and versions
        for key in ("reward/outcome", "async/policy_version", "async/hard_trained"):
            assert again[r["step"]][key] == r[key], key


@pytest.fixture()
def async_trainer(ray_cluster: dict, common: list[str], tmp_path: Path):
    from actors.trainer import StePPOTrainer
    from launch.config import load_config
    from launch.train import _prepare_inputs

    cfg, model_path = _prepare_inputs(load_config([*common, *ASYNC, "trainer.total_steps=4",
                                                   "learner.off_policy_correction=tis"]))
    t = StePPOTrainer(cfg, tmp_path, model_path)
    t.setup()
    yield t
    t.shutdown()


def test_a_rollout_actor_killed_mid_batch_loses_nothing_in_async_mode(async_trainer) -> None:
    import ray

    t = async_trainer
    first = t.train_step()
    assert first["async/staleness"] == 0 and "ppo/is_weight_mean" in first
    # Step 2 starts step 3's rollout in the thread and then updates: kill the actor inside it.
    worker = threading.Thread(target=lambda: out.append(t.train_step()))
    out: list[dict] = []
    worker.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pending = t.async_rollout.pending.get(3)
        if pending is not None and pending.future is not None:
            break
        time.sleep(0.05)
    victim = _pids("RolloutActor")[0]
    os.kill(victim, signal.SIGKILL)
    worker.join(timeout=900)
    assert out and out[0]["async/staleness"] == 1
    third, fourth = t.train_step(), t.train_step()
    assert t.step == 4 and victim not in _pids("RolloutActor")
    assert [third["async/policy_version"], fourth["async/policy_version"]] == [1, 2]
    assert third["async/staleness"] == fourth["async/staleness"] == 1
    batch = ray.get(t.async_rollout.last_trained.traj_ref)
    assert len(batch) == t.cfg.trainer.batch_size * t.cfg.rollout.n_samples  # every prompt came back
    assert 0.0 < fourth["ppo/is_weight_mean"] <= t.cfg.learner.is_cap


def test_an_async_run_resumed_from_its_checkpoint_ends_where_the_straight_run_ends(
        ray_cluster: dict, common: list[str], tmp_path: Path) -> None:
    """The same as the kill test above with one Ray cluster (a complete checkpoint is all a
    killed run leaves): the checkpoint of step 2 carries step 3's batch, rolled out by
    version 1 during step 2; a new trainer resumed from it trains on that batch."""
    from actors.trainer import StePPOTrainer
    from launch.config import load_config
    from launch.train import _prepare_inputs

    cfg, model_path = _prepare_inputs(load_config([*common, *ASYNC, "trainer.total_steps=4", "seed=5"]))
    straight = StePPOTrainer(cfg, tmp_path / "straight", model_path)
    straight.setup()
    try:
        records = [straight.train_step() for _ in range(2)]
        middle = straight.checkpoint()
        records += [straight.train_step() for _ in range(2)]
        end = straight.checkpoint()
    finally:
        straight.shutdown()
    assert [r["async/policy_version"] for r in records] == [0, 0, 1, 2]
    assert [r["async/staleness"] for r in records] == [0, 1, 1, 1]
    assert (middle / "async_pending.pkl").exists()

    resumed = StePPOTrainer(cfg, tmp_path / "resumed", model_path)
    resumed.setup()
    try:
        resumed.resume(middle)
        again = [resumed.train_step() for _ in range(2)]
        final = resumed.checkpoint()
    finally:
        resumed.shutdown()
    for r, q in zip(records[2:], again, strict=True):
        for key in ("reward/outcome", "async/policy_version", "async/hard_trained", "ppo/policy_loss"):
            assert q[key] == r[key], key
    a, b, start = _policy_weights(end), _policy_weights(final), _policy_weights(middle)
    assert any(not np.array_equal(a[k], start[k]) for k in a)  # training moved the weights
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
