"""``launch.submit``: a job's run directory outlives the job, and ``--stop`` gives it time to checkpoint."""

from __future__ import annotations

import doctest
from pathlib import Path

import launch.submit as submit


def test_a_relative_or_missing_run_dir_becomes_absolute() -> None:
    root = Path("/home/me/checkout")
    assert submit.with_run_dir(["trainer.run_dir=runs/a"], root) == ["trainer.run_dir=/home/me/checkout/runs/a"]
    assert submit.with_run_dir(["trainer.run_dir=/data/runs/a"], root) == ["trainer.run_dir=/data/runs/a"]
    added = submit.with_run_dir(["seed=1"], root)
    assert added[0] == "seed=1" and added[1].startswith("trainer.run_dir=/home/me/checkout/runs/")


def test_stop_waits_for_the_checkpoint_unless_the_user_says_otherwise() -> None:
    env = submit.runtime_env(Path("/w"), [])["env_vars"]
    assert env["RAY_JOB_STOP_WAIT_TIME_S"] == submit.STOP_WAIT_S
    env = submit.runtime_env(Path("/w"), ["RAY_JOB_STOP_WAIT_TIME_S=30", "A=b=c"])["env_vars"]
    assert env == {"RAY_JOB_STOP_WAIT_TIME_S": "30", "A": "b=c"}


def test_doctests() -> None:
    assert doctest.testmod(submit).failed == 0
