"""What a training run shows a person: a progress bar, a line per step, a results table, plots.

Runs in the driver (``launch.train``) and in the sweep callback.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from workers.tracking import plot_metrics, read_metrics

STEP_LINE = (
    ("reward", "reward/outcome", "{:+.3f}"),
    ("F1", "reward/answer_f1", "{:.3f}"),
    ("IG", "reward/info_gain", "{:.3f}"),
    ("redund", "reward/redundancy", "{:.3f}"),
    ("searches", "reward/num_searches", "{:.2f}"),
    ("KL", "ppo/kl_ref", "{:.4f}"),
    ("value EV", "ppo/explained_variance", "{:+.2f}"),
)
PLOT_GROUPS = {
    "reward components": ("reward/outcome", "reward/answer_f1", "reward/key_score",
                          "reward/info_gain", "reward/redundancy"),
    "answer F1 (train rollouts and validation)": ("reward/answer_f1", "eval/f1", "eval/em"),
    "searches per episode": ("reward/num_searches", "eval/searches"),
}


def progress_bar(total: int, initial: int = 0, desc: str = "StePPO") -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr,
                dynamic_ncols=True, leave=True)


def step_line(step: int, total: int, metrics: Mapping[str, float], label: str = "step") -> str:
    """``step 3/20 | reward +0.120 | F1 0.050 | ... | 31.2 s (rollout 20.1, reward 0.3, ...)``."""
    parts = [f"{label} {step}/{total}"]
    parts += [f"{name} {fmt.format(metrics[key])}" for name, key, fmt in STEP_LINE if key in metrics]
    if "eval/f1" in metrics:
        parts.append(f"val F1 {metrics['eval/f1']:.3f} EM {metrics.get('eval/em', 0.0):.3f}")
    split = ", ".join(f"{k.split('/')[1].removesuffix('_s')} {metrics[k]:.1f}"
                      for k in ("time/rollout_s", "time/reward_s", "time/learn_s", "time/sync_s") if k in metrics)
    parts.append(f"{metrics.get('time/step_s', 0.0):.1f} s ({split})")
    return " | ".join(parts)


def print_step(step: int, total: int, metrics: Mapping[str, float], bar: tqdm | None = None,
               label: str = "step") -> None:
    line = step_line(step, total, metrics, label)
    if bar is not None:
        bar.write(line)
    else:
        print(line)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


SFT_PLOT_GROUPS = {
    "SFT loss (per token)": ("sft/loss",),
    "validation: answers and searches hitting gold": ("eval/f1", "eval/em", "eval/gold_hit"),
    "validation: searches per episode": ("eval/searches",),
}
"""The panels of a ``launch.sft`` run."""


def write_plots(run_dir: Path, groups: Mapping[str, tuple[str, ...]] = PLOT_GROUPS) -> list[Path]:
    """``run_dir/plots.png`` from ``metrics.jsonl`` (nothing when there are no metrics)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = read_metrics(path)
    return [plot_metrics(records, groups, run_dir / "plots.png")] if records else []


def print_results(summary: Mapping[str, Any], run_dir: Path) -> None:
    """The end-of-run table: first and last step, final validation, where things are."""
    path = run_dir / "metrics.jsonl"
    records = read_metrics(path) if path.exists() else []
    keys = [k for _, k, _ in STEP_LINE] + ["eval/em", "eval/f1", "eval/cover_em", "eval/searches", "time/step_s"]
    if records:
        first, last = records[0], records[-1]
        rows = [(k, first.get(k, "-"), last.get(k, "-")) for k in keys if k in first or k in last]
        print(table(rows, ("metric", f"step {int(first['step'])}", f"step {int(last['step'])}")))
    print(f"run directory: {run_dir}")
    print(f"checkpoint:    {summary.get('checkpoint')}")
    for plot in summary.get("plots", []):
        print(f"plot:          {plot}")
    print(f"wall time:     {summary.get('wall_s', 0.0):.0f} s")
