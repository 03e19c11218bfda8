"""Hydra callback: after a multirun, one table of every run's final validation metrics.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``; runs in the sweep's process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from launch.report import table


def sweep_rows(sweep_dir: Path) -> list[tuple[Any, ...]]:
    """One row per finished run under ``sweep_dir`` (its ``summary.json``)."""
    rows = []
    for summary_path in sorted(sweep_dir.glob("*/summary.json"), key=lambda p: p.parent.name):
        s = json.loads(summary_path.read_text())
        e = s.get("eval", {})
        rows.append((summary_path.parent.name, s.get("reward"), s.get("seed"), s.get("steps"),
                     e.get("eval/em", float("nan")), e.get("eval/f1", float("nan")),
                     e.get("eval/searches", float("nan")), round(float(s.get("wall_s", 0.0)))))
    return rows


class SweepSummary(Callback):
    """Prints the sweep table and writes it to ``<sweep dir>/summary.md``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = sweep_rows(sweep_dir)
        if not rows:
            return
        text = table(rows, ("run", "reward", "seed", "steps", "val EM", "val F1", "searches", "wall s"))
        (sweep_dir / "summary.md").write_text(text + "\n")
        print(f"\nsweep {sweep_dir}\n{text}")
