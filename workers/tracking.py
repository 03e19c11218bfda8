"""Run bookkeeping: metrics to JSONL (always), TensorBoard (default), W&B (when configured);
plots of a run's metrics; complete-or-absent checkpoint directories.

Runs in the driver. Ray-free.
"""

from __future__ import annotations

import json
import logging
import math
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


def begin_checkpoint(run_dir: str | Path, step: int) -> Path:
    """A fresh staging directory; ``commit_checkpoint`` makes it visible."""
    staging = checkpoint_dir(run_dir, step).with_suffix(".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit_checkpoint(staging: Path, state: Mapping[str, Any]) -> Path:
    """Write the trainer state and the marker, then rename into place (atomic on one filesystem)."""
    (staging / "trainer_state.json").write_text(json.dumps(dict(state), indent=2) + "\n")
    (staging / COMPLETE_MARKER).write_text("ok\n")
    final = staging.with_suffix("")
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``run_dir/checkpoints``, or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    complete = [p for p in root.glob("step_*") if p.is_dir() and p.suffix == "" and (p / COMPLETE_MARKER).exists()]
    return max(complete, key=lambda p: int(p.name.split("_")[1]), default=None)
