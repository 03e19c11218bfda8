"""Run bookkeeping: metrics to JSONL (always), TensorBoard (default), W&B (when configured);
plots of a run's metrics; complete-or-absent, fsynced checkpoint directories and their pruning.

Runs in the driver. Ray-free.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
"""Written last into a checkpoint directory; only directories that have it are resumed from."""


class MetricsLogger:
    """Appends one JSON object per step to ``metrics.jsonl`` and mirrors it to the trackers."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, wandb_project: str | None = None,
                 run_name: str | None = None, config: Mapping[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb: Any = None
        self._wandb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if wandb_project:
            import wandb  # optional dependency; WANDB_MODE=offline works without network

            self._wandb = wandb.init(project=wandb_project, name=run_name, config=dict(config or {}),
                                     dir=str(run_dir))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if math.isfinite(float(value)):
                    self._tb.add_scalar(key, float(value), step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(dict(metrics), step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a ``metrics.jsonl`` (later records of a step replace earlier ones)."""
    by_step: dict[int, dict[str, float]] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                by_step.setdefault(int(record["step"]), {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Rewrite ``metrics.jsonl`` for a run resumed at ``last_step``: one record per step, none
    after it (steps logged after the checkpoint are redone). Returns the records dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in read_metrics(path) if int(r["step"]) <= last_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    tmp.replace(path)
    return len(lines) - len(kept)


def plot_metrics(records: Sequence[Mapping[str, float]], groups: Mapping[str, Sequence[str]],
                 out: str | Path, first_panel: Callable[[Any, Sequence[Mapping[str, float]]], None] | None = None
                 ) -> Path:
    """One PNG with a panel per group of metric keys, over steps; ``first_panel(ax, records)``
    draws an extra panel on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extra = 1 if first_panel is not None else 0
    fig, axes = plt.subplots(len(groups) + extra, 1, figsize=(8, 3 * (len(groups) + extra)), squeeze=False)
    if first_panel is not None:
        first_panel(axes[0, 0], records)
    for ax, (title, keys) in zip(axes[extra:, 0], groups.items(), strict=True):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


STAGING_SUFFIX = ".partial"
"""A checkpoint being written: ``step_N.partial``, renamed to ``step_N`` once complete."""
REPLACED_SUFFIX = ".old"
"""A complete checkpoint moved aside while a new one of the same step takes its name."""


def _fsync_path(path: Path) -> None:
    """Flush one file's or directory's data and metadata to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory bottom-up (entries before parents)."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            if not os.path.islink(os.path.join(dirpath, name)):
                _fsync_path(Path(dirpath, name))
        _fsync_path(Path(dirpath))


def _write_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _step_of(path: Path) -> int:
    """``step_000012``, ``step_000012.partial``, ``step_000012.old`` -> 12 (-1 for other names)."""
    digits = path.name.split(".", 1)[0].removeprefix("step_")
    return int(digits) if digits.isdigit() else -1


def begin_checkpoint(run_dir: str | Path, step: int) -> Path:
    """A fresh staging directory; ``commit_checkpoint`` makes it visible."""
    staging = checkpoint_dir(run_dir, step).with_suffix(STAGING_SUFFIX)
    if staging.exists():  # a save of this step that never committed (this driver is its only writer)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit_checkpoint(staging: Path, state: Mapping[str, Any]) -> Path:
    """Make ``staging`` the complete checkpoint of its step, durably.

    Writes the trainer state, fsyncs every file and directory, then writes and fsyncs the
    marker; only then does it take the final name. A previous checkpoint of the same step is
    renamed aside (``step_N.old``) first and removed only after the new one is in place, so a
    crash at any moment leaves a complete checkpoint of the step (``complete_checkpoints``
    counts a ``step_N.old`` whose ``step_N`` is missing).
    """
    _write_synced(staging / "trainer_state.json", json.dumps(dict(state), indent=2) + "\n")
    _fsync_tree(staging)
    _write_synced(staging / COMPLETE_MARKER, "ok\n")
    _fsync_path(staging)
    final = staging.with_suffix("")
    parent = final.parent
    replaced = final.with_suffix(REPLACED_SUFFIX)
    if replaced.exists() and final.exists():  # a finished swap whose cleanup did not run
        shutil.rmtree(replaced)
    # Else a cut swap left the previous checkpoint aside: it stays there until the new one is in.
    if final.exists():
        os.rename(final, replaced)
        _fsync_path(parent)
    os.rename(staging, final)
    _fsync_path(parent)
    if replaced.exists():
        shutil.rmtree(replaced)
    return final


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / COMPLETE_MARKER).is_file()


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints under ``run_dir/checkpoints``, oldest step first.

    One per step: ``step_N``, or ``step_N.old`` when a replacement of step N was cut between
    its two renames (nothing is renamed here: a reader never races a writer).
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    complete = []
    for path in root.glob("step_*"):
        if _step_of(path) < 0 or not _is_complete(path):
            continue
        if path.suffix == "" or (path.suffix == REPLACED_SUFFIX and not path.with_suffix("").exists()):
            complete.append(path)
    return sorted(complete, key=_step_of)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``run_dir/checkpoints``, or None."""
    complete = complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def prune_checkpoints(run_dir: str | Path, keep: int, best_step: int | None = None) -> list[Path]:
    """Remove old checkpoints; return what was removed.

    Keeps the ``keep`` newest complete checkpoints plus the one of ``best_step`` (the best
    by validation EM; None: no best yet). Incomplete leftovers (``.partial`` staging, a
    directory without the marker, a moved-aside ``.old``) are removed only when they are
    older than the newest complete checkpoint, so a save in progress is never touched.
    Call it from the driver after a commit, never while a save is being written.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest checkpoint), got {keep}")
    complete = complete_checkpoints(run_dir)
    if not complete:
        return []
    kept = set(complete[-keep:])
    best = [p for p in complete if _step_of(p) == best_step]
    if best_step is not None and not best:
        logger.warning("best checkpoint step %d is not among the complete checkpoints", best_step)
    kept.update(best)
    newest = _step_of(complete[-1])
    root = complete[-1].parent
    leftovers = [p for p in root.glob("step_*") if p.is_dir() and p not in complete
                 and 0 <= _step_of(p) < newest]
    removed = sorted([p for p in complete if p not in kept] + leftovers, key=_step_of)
    for path in removed:
        shutil.rmtree(path)
    if removed:
        _fsync_path(root)
        logger.info("pruned %d checkpoint directories: %s", len(removed), ", ".join(p.name for p in removed))
    return removed
