"""The warm-start cache: keyed by what the weights depend on, complete or absent."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from launch.config import load_config
from launch.warm_start import MARKER, _sweep_leftovers, cached_warm_start, warm_start_inputs, warm_start_key


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.parquet").write_bytes(b"rows v1")
    (d / "corpus.jsonl").write_text('{"id": "1", "contents": "\\"A\\"\\ntext"}\n')
    return d


def _key(cfg, policy: str = "/cache/tiny-abc") -> str:
    return warm_start_key(warm_start_inputs(cfg, policy))


def test_the_key_changes_with_every_input_it_depends_on(data_dir: Path) -> None:
    cfg = load_config([f"data.output_dir={data_dir}"])
    base = _key(cfg)
    assert _key(cfg) == base  # deterministic
    assert _key(cfg, "/cache/tiny-other") != base  # another tiny policy build
    assert _key(replace(cfg, seed=cfg.seed + 1)) != base
    assert _key(replace(cfg, sft=replace(cfg.sft, first_search_steps=7))) != base
    assert _key(replace(cfg, sft=replace(cfg.sft, early_answer_share=0.25))) != base
    assert _key(replace(cfg, rollout=replace(cfg.rollout, max_obs_tokens=99))) != base
    assert _key(replace(cfg, retrieval=replace(cfg.retrieval, topk=5))) != base
    (data_dir / "train.parquet").write_bytes(b"rows v2")
    assert _key(cfg) != base  # the data files' bytes
    # Settings the warm start does not read leave the key alone.
    assert _key(replace(cfg, trainer=replace(cfg.trainer, total_steps=99))) == _key(cfg)


def test_a_folder_without_its_marker_is_not_trusted(tmp_path: Path) -> None:
    target = tmp_path / "sft-k1"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"half written")
    assert cached_warm_start(tmp_path, "k1") is None
    (target / MARKER).write_text("{}")
    assert cached_warm_start(tmp_path, "k1") == target


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_build_are_swept_but_a_live_build_is_left_alone(tmp_path: Path) -> None:
    dead = tmp_path / ".sft-k1-aaaa"
    dead.mkdir()
    (dead / "BUILDER_PID").write_text(str(_dead_pid()))
    live = tmp_path / ".sft-k1-bbbb"
    live.mkdir()
    (live / "BUILDER_PID").write_text(str(os.getpid()))
    other_key = tmp_path / ".sft-k2-cccc"
    other_key.mkdir()
    incomplete = tmp_path / "sft-k1"
    incomplete.mkdir()
    _sweep_leftovers(tmp_path, "k1")
    assert not dead.exists() and not incomplete.exists()
    assert live.exists() and other_key.exists()
