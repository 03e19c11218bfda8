"""What a training run shows a person: a progress bar, a line per step, a results table, plots.

Runs in the driver (``launch.train``) and in the sweep callback.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from workers.evaluation import EVAL_EM, EVAL_F1, EVAL_GOLD_HIT, EVAL_REDUNDANCY, EVAL_SEARCHES
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


def eval_line(label: str, metrics: Mapping[str, float], seconds: float | None = None) -> str:
    """``start | validation EM 0.047 | F1 0.078 | searches 2.39 | gold-hit 0.458 | 64 questions, 21.3 s``."""
    parts = [label, f"validation EM {metrics.get(EVAL_EM, 0.0):.3f}", f"F1 {metrics.get(EVAL_F1, 0.0):.3f}",
             f"searches {metrics.get(EVAL_SEARCHES, 0.0):.2f}", f"gold-hit {metrics.get(EVAL_GOLD_HIT, 0.0):.3f}"]
    tail = f"{int(metrics.get('eval/count', 0))} questions"
    parts.append(tail if seconds is None else f"{tail}, {seconds:.1f} s")
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


def write_plots(run_dir: Path, groups: Mapping[str, tuple[str, ...]] = PLOT_GROUPS,
                learning_panel: bool = True) -> list[Path]:
    """``run_dir/plots.png`` from ``metrics.jsonl`` (nothing when there are no metrics).

    ``learning_panel``: the first panel is the training reward per step with its running
    mean, and validation EM with the start (step 0) and end evaluations marked.
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = read_metrics(path)
    if not records:
        return []
    out = plot_metrics(records, groups, run_dir / "plots.png",
                       first_panel=_learning_panel if learning_panel else None)
    return [out]


def _learning_panel(ax: Any, records: Sequence[Mapping[str, float]]) -> None:
    steps = [(int(r["step"]), r["reward/outcome"]) for r in records if "reward/outcome" in r and r["step"] > 0]
    if steps:
        xs, ys = zip(*steps, strict=True)
        ax.plot(xs, ys, color="tab:blue", alpha=0.35, marker="o", markersize=2, label="training reward")
        window = max(1, len(ys) // 5)
        mean = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1])
                for i in range(len(ys))]
        ax.plot(xs, mean, color="tab:blue", linewidth=2.5, label=f"training reward, mean of {window}")
    ax.set_ylabel("reward")
    evals = [(int(r["step"]), r[EVAL_EM]) for r in records if EVAL_EM in r]
    if evals:
        ax2 = ax.twinx()
        xs, ys = zip(*evals, strict=True)
        ax2.plot(xs, ys, color="tab:red", marker="s", linestyle="--", label="validation EM")
        for x, y, what in ((xs[0], ys[0], "start"), (xs[-1], ys[-1], "end")):
            ax2.annotate(f"{what}: EM {y:.3f}", (x, y), textcoords="offset points", xytext=(0, 8),
                         ha="center", fontsize=8, color="tab:red")
        ax2.set_ylabel("validation EM", color="tab:red")
        ax2.legend(loc="lower right", fontsize=8)
    ax.set_title("StePPO: training reward and validation EM (start and end marked)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)


START_END = (("EM", EVAL_EM), ("F1", EVAL_F1), ("searches / question", EVAL_SEARCHES),
             ("searches hitting gold", EVAL_GOLD_HIT), ("redundancy", EVAL_REDUNDANCY))
"""Validation metrics of the closing table, start -> end."""
REWARD_ROWS = (("reward", "reward/outcome"), ("answer F1", "reward/answer_f1"),
               ("search-key score", "reward/key_score"), ("information gain", "reward/info_gain"),
               ("redundancy penalty", "reward/redundancy"), ("searches", "reward/num_searches"))
"""Training reward components of the closing table: the first steps' mean -> the last steps'."""


def start_end_rows(summary: Mapping[str, Any], records: Sequence[Mapping[str, float]]) -> list[tuple[str, ...]]:
    """Rows ``(what, start, end, change)``: validation before step 1 and at the end, and the
    training reward components averaged over the first and the last few steps."""
    start, end = summary.get("eval_start") or {}, summary.get("eval") or {}
    rows = [(f"validation {name}", f"{start[k]:.3f}", f"{end[k]:.3f}", f"{end[k] - start[k]:+.3f}")
            for name, k in START_END if k in start and k in end]
    steps = [r for r in records if r.get("step", 0) > 0 and "reward/outcome" in r]
    if steps:
        n = max(1, min(3, len(steps) // 2))
        for name, k in REWARD_ROWS:
            a, b = _mean(steps[:n], k), _mean(steps[-n:], k)
            if a is not None and b is not None:
                rows.append((f"train {name} (steps {n} first / last)", f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"))
    return rows


def _mean(records: Sequence[Mapping[str, float]], key: str) -> float | None:
    values = [r[key] for r in records if key in r]
    return sum(values) / len(values) if values else None


def verdict(summary: Mapping[str, Any]) -> str:
    """One plain sentence on whether validation EM moved from the start."""
    start, end = summary.get("eval_start") or {}, summary.get("eval") or {}
    if EVAL_EM not in start or EVAL_EM not in end:
        return "No start and end validation to compare (trainer.eval_start=false or no validation rows)."
    a, b, n = start[EVAL_EM], end[EVAL_EM], int(end.get("eval/count", 0))
    steps, count = summary.get("steps", 0), f" on {n} validation questions" if n else ""
    if b > a:
        return f"StePPO raised validation EM from {a:.3f} to {b:.3f} (+{b - a:.3f}){count} in {steps} steps."
    if b == a:
        return f"Validation EM stayed at {a:.3f}{count} after {steps} steps."
    return f"Validation EM fell from {a:.3f} to {b:.3f} ({b - a:+.3f}){count} in {steps} steps."


def print_results(summary: Mapping[str, Any], run_dir: Path) -> None:
    """The end-of-run table: start -> end, a verdict, where things are."""
    path = run_dir / "metrics.jsonl"
    records = read_metrics(path) if path.exists() else []
    rows = start_end_rows(summary, records)
    if rows:
        print(table(rows, ("metric", "start", "end", "change")))
    print(verdict(summary))
    print(f"run directory: {run_dir}")
    print(f"checkpoint:    {summary.get('checkpoint')}")
    for plot in summary.get("plots", []):
        print(f"plot:          {plot}")
    print(f"wall time:     {summary.get('wall_s', 0.0):.0f} s")
