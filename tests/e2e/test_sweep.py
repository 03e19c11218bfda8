"""A Hydra multirun of ``launch.train`` on a local cluster it starts itself (issue 7).

Two points (``reward=stepsearch,outcome_only``) of the tiny job in one process: each gets
its run directory with metrics and a summary, and the sweep callback's table lists both.
The runs generate with Hugging Face instead of vLLM: what is under test is the multirun
(two jobs in one driver and one cluster, the table), and a vLLM engine start per run would
double the tier's time; vLLM rollouts are covered by ``test_job_submit``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.support import ROOT, TINY, base_env

pytestmark = pytest.mark.e2e

SWEEP_TIMEOUT_S = 1200
ENGINE = "rollout.engine=hf"


def test_a_two_point_reward_sweep_writes_both_runs_and_the_table(toyworld: list[str], ray_token: Path,
                                                                 tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "launch.train", "-m", "reward=stepsearch,outcome_only", *TINY, ENGINE, *toyworld,
           f"hydra.sweep.dir={sweep_dir}"]
    # Its own session, so that a hung sweep and the local cluster under it can be killed as a group.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=base_env(ray_token), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the sweep did not finish in {SWEEP_TIMEOUT_S} s:\n{out[-5000:]}")
    assert proc.returncode == 0, out[-5000:]

    rewards = {}
    for run in ("0", "1"):
        run_dir = sweep_dir / run
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        assert steps == [0, 1, 2], run  # step 0: the starting policy's validation
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["run_dir"] == str(run_dir) and summary["steps"] == 2
        rewards[run] = summary["reward"]
    assert sorted(rewards.values()) == ["outcome_only", "stepsearch"]

    table = (sweep_dir / "summary.md").read_text()
    for run, reward in rewards.items():
        assert any(line.split()[:2] == [run, reward] for line in table.splitlines()), table
    assert "sweep " in out and "outcome_only" in out  # the table is printed too


def test_an_optuna_preset_composes_when_the_plugin_is_installed() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optional optuna extra is not installed")
    from hydra import compose, initialize_config_dir

    from launch.config import CONFIG_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/sweeper=optuna_f1"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert str(sweeper.direction) == "maximize"
    assert set(sweeper.params) >= {"learner.actor_lr", "reward.step_reward_scale"}
