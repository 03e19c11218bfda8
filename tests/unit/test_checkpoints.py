"""Checkpoint directories: durable commit, same-step replacement, crashes, pruning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import workers.tracking as tracking
from workers.tracking import (
    COMPLETE_MARKER,
    begin_checkpoint,
    checkpoint_dir,
    commit_checkpoint,
    complete_checkpoints,
    latest_checkpoint,
    prune_checkpoints,
)


def save(run_dir: Path, step: int, payload: str = "weights") -> Path:
    """A checkpoint as the trainer writes one: learner files in the staging dir, then commit."""
    staging = begin_checkpoint(run_dir, step)
    (staging / "learner" / "hf").mkdir(parents=True)
    (staging / "learner" / "model.bin").write_text(payload)
    (staging / "learner" / "hf" / "config.json").write_text("{}")
    return commit_checkpoint(staging, {"step": step})


def steps(paths: list[Path]) -> list[int]:
    return [int(p.name.split(".")[0].removeprefix("step_")) for p in paths]


def test_every_file_and_directory_is_fsynced_before_the_marker(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, bool]] = []  # (path, marker existed at that moment)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((path, (checkpoint_dir(tmp_path, 3).with_suffix(".partial") / COMPLETE_MARKER).exists()))
        real_fsync(fd)

    monkeypatch.setattr(tracking.os, "fsync", recording_fsync)
    final = save(tmp_path, 3)
    staging = str(final.with_suffix(".partial"))
    before_marker = {path for path, marker in synced if not marker}
    for rel in ("learner/model.bin", "learner/hf/config.json", "trainer_state.json",
                "learner/hf", "learner", ""):
        assert os.path.normpath(os.path.join(staging, rel)) in before_marker, rel
    assert (os.path.join(staging, COMPLETE_MARKER), True) in synced  # the marker itself, then
    assert synced[-1][0] == str(final.parent)  # the rename is made durable last
    assert json.loads((final / "trainer_state.json").read_text()) == {"step": 3}


def test_a_crash_between_staging_and_commit_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    first = save(tmp_path, 5, payload="old")
    staging = begin_checkpoint(tmp_path, 5)  # the re-save of step 5 ...
    (staging / "learner").mkdir()
    (staging / "learner" / "model.bin").write_text("half written")
    # ... crashes here: no commit.
    assert latest_checkpoint(tmp_path) == first
    assert (first / "learner" / "model.bin").read_text() == "old"
    # The next save of the step starts clean and replaces the old one only when complete.
    again = save(tmp_path, 5, payload="new")
    assert again == first and (again / "learner" / "model.bin").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000005"]


def test_a_crash_in_the_middle_of_the_swap_restores_the_previous_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(tmp_path, 7, payload="old")
    real_rename, calls = os.rename, []

    def crash_on_second_rename(src: str | Path, dst: str | Path) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # the old one is aside, the new one not yet in place
            raise OSError("power cut")
        real_rename(src, dst)

    monkeypatch.setattr(tracking.os, "rename", crash_on_second_rename)
    with pytest.raises(OSError, match="power cut"):
        save(tmp_path, 7, payload="new")
    monkeypatch.setattr(tracking.os, "rename", real_rename)
    assert not checkpoint_dir(tmp_path, 7).exists()  # mid-swap: only step_7.old is complete
    previous = latest_checkpoint(tmp_path)
    assert previous == checkpoint_dir(tmp_path, 7).with_suffix(".old")
    assert (previous / "learner" / "model.bin").read_text() == "old"
    # The next save of step 7 keeps that copy until the new one is in place, then drops it.
    again = save(tmp_path, 7, payload="newer")
    assert latest_checkpoint(tmp_path) == again == checkpoint_dir(tmp_path, 7)
    assert (again / "learner" / "model.bin").read_text() == "newer"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000007"]


def test_a_swap_cut_before_cleanup_leaves_the_new_checkpoint(tmp_path: Path) -> None:
    new = save(tmp_path, 9, payload="new")
    stale = new.with_suffix(".old")  # the old copy a crash kept from being removed
    (stale / "learner").mkdir(parents=True)
    (stale / COMPLETE_MARKER).write_text("ok\n")
    assert complete_checkpoints(tmp_path) == [new]
    assert (save(tmp_path, 9, payload="newer") / "learner" / "model.bin").read_text() == "newer"
    assert not stale.exists()


def test_prune_keeps_the_last_n_and_the_best(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8, 10):
        save(tmp_path, step)
    removed = prune_checkpoints(tmp_path, keep=2, best_step=4)
    assert steps(removed) == [2, 6]
    assert steps(complete_checkpoints(tmp_path)) == [4, 8, 10]
    # The best one moves on: the old best goes once it is neither best nor among the last 2.
    save(tmp_path, 12)
    assert steps(prune_checkpoints(tmp_path, keep=2, best_step=12)) == [4, 8]
    assert steps(complete_checkpoints(tmp_path)) == [10, 12]
    # No best (no validation yet) or an unknown best: only the last N stay.
    assert steps(prune_checkpoints(tmp_path, keep=1, best_step=None)) == [10]
    assert steps(prune_checkpoints(tmp_path, keep=1, best_step=99)) == []


def test_prune_removes_incomplete_leftovers_only_when_safe(tmp_path: Path) -> None:
    save(tmp_path, 4)
    root = tmp_path / "checkpoints"
    begin_checkpoint(tmp_path, 2)  # an abandoned save older than the newest complete one
    (root / "step_000003").mkdir()  # a directory without the marker
    (root / "step_000001.old").mkdir()  # a leftover of a finished swap
    save(tmp_path, 6)
    in_progress = begin_checkpoint(tmp_path, 8)  # newer than every complete one: maybe being written
    removed = prune_checkpoints(tmp_path, keep=5, best_step=None)
    assert sorted(p.name for p in removed) == ["step_000001.old", "step_000002.partial", "step_000003"]
    assert in_progress.is_dir() and steps(complete_checkpoints(tmp_path)) == [4, 6]


def test_prune_edge_cases(tmp_path: Path) -> None:
    assert prune_checkpoints(tmp_path, keep=3, best_step=1) == []  # no checkpoints dir
    begin_checkpoint(tmp_path, 1)
    assert prune_checkpoints(tmp_path, keep=3, best_step=1) == []  # nothing complete: touch nothing
    assert checkpoint_dir(tmp_path, 1).with_suffix(".partial").is_dir()
    with pytest.raises(ValueError, match="keep must be at least 1"):
        prune_checkpoints(tmp_path, keep=0, best_step=None)
