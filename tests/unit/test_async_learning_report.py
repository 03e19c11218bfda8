"""The async-vs-sync learning comparison: arm settings, walls, curves and the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.config import load_config
from launch.experiments.async_learning import (
    ARMS,
    PRESETS,
    arm_overrides,
    em_curve,
    markdown_table,
    training_wall,
)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_both_arms_are_valid_configs_that_differ_only_in_the_async_settings(preset: str) -> None:
    sync = load_config([*PRESETS[preset], *arm_overrides("sync", 1, "tis"), "seed=2"])
    asyn = load_config([*PRESETS[preset], *arm_overrides("async", 2, "decoupled"), "seed=2"])
    assert not sync.trainer.async_rollout and asyn.trainer.async_rollout
    assert asyn.trainer.max_staleness == 2 and asyn.learner.off_policy_correction == "decoupled"
    assert asyn.learner.num_threads == 1
    assert (sync.trainer.total_steps, sync.trainer.batch_size, sync.seed) == (
        asyn.trainer.total_steps, asyn.trainer.batch_size, asyn.seed)


def _run(tmp_path: Path, name: str, records: list[dict]) -> dict:
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"run_dir": str(run_dir)}


def test_the_curve_starts_at_the_warm_start_and_the_wall_ends_at_the_last_step(tmp_path: Path) -> None:
    run = _run(tmp_path, "a", [{"step": 0, "eval/em": 0.1, "critic_warmup/steps": 2.0},
                               {"step": 1, "reward/outcome": 0.3, "time/elapsed_s": 40.0},
                               {"step": 2, "eval/em": 0.25, "time/elapsed_s": 95.5}])
    assert em_curve(run) == [(0.0, 0.1), (95.5, 0.25)]
    assert training_wall(run) == 95.5


def _result(seed: int, em: float, wall: float) -> dict:
    return {"seed": seed, "em": em, "f1": em, "searches": 2.0, "wall_s": wall, "curve": [(0.0, 0.1), (wall, em)]}


def test_table_gives_each_arm_mean_and_spread_and_the_gap_in_points() -> None:
    results = {"warm_start": {"em": 0.1, "f1": 0.1, "searches": 1.5}, "max_staleness": 1, "correction": "tis",
               "sync": [_result(1, 0.30, 400.0), _result(2, 0.20, 420.0)],
               "async": [_result(1, 0.28, 250.0), _result(2, 0.20, 270.0)],
               "sync_wall_s": 410.0, "async_wall_s": 260.0, "test_questions": 200}
    text = markdown_table(results)
    lines = text.splitlines()
    assert lines[2].startswith("| warm start | 0.100 |")
    assert lines[3] == "| sync | 0.250 ± 0.050 | 0.250 ± 0.050 | 2.00 ± 0.00 | 410 ± 10 |"
    assert lines[4].startswith("| async (k=1, tis) | 0.240 ± 0.040 |")
    assert "async minus sync: -1.0 points over 200 test questions and seeds 1,2" in text
    assert "(1.58x)" in text
    assert ARMS == ("sync", "async")
