"""A resume continues the same run: the checkpoint's settings win unless the command line
changes one, which is refused (or allowed on purpose, with a warning)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from launch.config import load_config
from workers.config import ConfigError
from workers.run_identity import data_fingerprint, reconcile, run_identity
from workers.tracking import MetricsLogger, read_metrics, truncate_metrics

CKPT = Path("/runs/x/checkpoints/step_000004")


@pytest.fixture()
def cfg(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"train rows")
    (data / "validation.parquet").write_bytes(b"validation rows")
    return load_config(["trainer=tiny", f"data.output_dir={data}", "seed=5", "reward=stepsearch"])


def _state(cfg, model_path: str = "/models/sft-policy") -> dict:
    return {"step": 4, "run": run_identity(cfg, model_path)}


def test_settings_the_command_line_leaves_alone_come_from_the_checkpoint(cfg) -> None:
    started = replace(cfg, learner=replace(cfg.learner, num_ranks=2, mini_batch_size=8, micro_batch_size=2))
    now = load_config(["trainer=tiny", f"data.output_dir={cfg.data.output_dir}", "reward=outcome_only"])
    out = reconcile(now, _state(started), CKPT, overrides=["trainer.resume=auto"])
    assert out.model.path == "/models/sft-policy"  # the KL reference stays the run's starting policy
    assert out.seed == 5 and out.reward.name == "stepsearch" and out.learner.num_ranks == 2


@pytest.mark.parametrize(("override", "field", "ours", "theirs"), [
    ("seed=6", "seed", "6", "5"),
    ("model.path=/models/other", "model.path", "'/models/other'", "'/models/sft-policy'"),
    ("reward=outcome_only", "reward", "'outcome_only'", "'stepsearch'"),
    ("learner.zero_stage=3", "learner.zero_stage", "3", "0"),
])
def test_a_changed_setting_is_refused_naming_the_field_and_both_values(cfg, override: str, field: str, ours: str,
                                                                       theirs: str) -> None:
    now = load_config(["trainer=tiny", f"data.output_dir={cfg.data.output_dir}", "seed=5", override])
    with pytest.raises(ConfigError) as info:
        reconcile(now, _state(cfg), CKPT, overrides=[override])
    assert info.value.field_name == field
    message = str(info.value)
    assert str(CKPT) in message and ours in message and theirs in message


def test_changed_data_files_are_refused_even_without_an_override(cfg) -> None:
    state = _state(cfg)
    (Path(cfg.data.output_dir) / "train.parquet").write_bytes(b"other rows")
    with pytest.raises(ConfigError, match=r"data\.output_dir"):
        reconcile(cfg, state, CKPT, overrides=[])


def test_resume_allow_changes_lets_a_change_through_with_a_warning(cfg, caplog) -> None:
    now = load_config(["trainer=tiny", f"data.output_dir={cfg.data.output_dir}", "seed=6",
                       "trainer.resume_allow_changes=true"])
    with caplog.at_level(logging.WARNING):
        out = reconcile(now, _state(cfg), CKPT, overrides=["seed=6"])
    assert out.seed == 6 and "resuming with a changed seed" in caplog.text


def test_a_checkpoint_without_an_identity_reads_its_config(cfg) -> None:
    from dataclasses import asdict

    old = {"step": 2, "seed": 5, "model_path": "/models/a", "config": asdict(cfg)}
    now = load_config(["trainer=tiny", f"data.output_dir={cfg.data.output_dir}"])
    out = reconcile(now, old, CKPT, overrides=[])
    assert out.model.path == "/models/a" and out.seed == 5


def test_the_fingerprint_covers_every_split(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("a")
    first = data_fingerprint(tmp_path, "jsonl")
    (tmp_path / "test.jsonl").write_text("b")
    assert data_fingerprint(tmp_path, "jsonl") != first


def test_truncating_metrics_keeps_each_step_once_up_to_the_checkpoint(tmp_path: Path) -> None:
    tracker = MetricsLogger(tmp_path, tensorboard=False)
    for step, value in [(0, 1.0), (0, 2.0), (1, 3.0), (2, 4.0), (3, 5.0), (2, 6.0)]:
        tracker.log(step, {"m": value})
    tracker.close()
    assert truncate_metrics(tmp_path / "metrics.jsonl", 2) == 3
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert [(r["step"], r["m"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(0, 2.0), (1, 3.0), (2, 6.0)]
