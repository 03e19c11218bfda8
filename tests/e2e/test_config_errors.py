"""``launch.train`` refuses bad configurations before any actor starts (issue 7).

A worker count the cluster cannot hold stops with exit code 2 and a line naming
``rollout.num_workers`` after the (local) cluster is reached but before retrieval,
rollout, reward or learner actors exist; an unknown preset stops in Hydra's composition.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.support import ROOT, base_env

pytestmark = pytest.mark.e2e

ACTOR_TRACES = ("RetrievalActor", "RolloutActor", "RewardActor", "LearnerWorker", "vLLM", "vllm", "EngineCore",
                "StePPO:")
"""What the output would contain once any actor, engine or the training loop had started."""


def _train(args: list[str], ray_token: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.train", *args], cwd=ROOT, env=base_env(ray_token),
                          capture_output=True, text=True, timeout=300)


def test_too_many_rollout_workers_stop_before_any_actor_starts(toyworld: list[str], ray_token: Path,
                                                                tmp_path: Path) -> None:
    result = _train(["rollout.num_workers=16", *toyworld, f"trainer.run_dir={tmp_path / 'run'}"], ray_token)
    printed = result.stdout + result.stderr
    assert result.returncode == 2, printed[-3000:]
    assert "config error: rollout.num_workers:" in result.stderr
    started = [trace for trace in ACTOR_TRACES if trace in printed]
    assert not started, f"{started} appeared before the config error:\n{printed[-3000:]}"
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_unknown_preset_is_reported_by_hydra(ray_token: Path, tmp_path: Path) -> None:
    result = _train(["reward=nope", f"trainer.run_dir={tmp_path / 'run'}"], ray_token)
    assert result.returncode != 0
    assert "Could not find 'reward/nope'" in result.stderr, result.stderr[-3000:]
    assert "stepsearch" in result.stderr  # Hydra lists the presets that exist
    assert "Traceback" not in result.stderr
