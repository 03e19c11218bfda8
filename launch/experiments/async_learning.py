"""Does asynchronous rollout learn as well as the synchronous loop? Same steps, same seeds.

    python -m launch.experiments.async_learning sft_policy=DIR                  # toyworld learning preset
    python -m launch.experiments.async_learning preset=quickstart sft_policy=DIR data.output_dir=...
    python -m launch.experiments.async_learning sft_policy=DIR seeds=1 trainer.total_steps=2

Tool arguments (top-level keys; every other key=value is a Hydra override):
  sft_policy=DIR   the warm start both arms train from (a Hugging Face model directory)
  preset=NAME      toyworld_learning (default: ``+experiment=toyworld_learning``) or quickstart
                   (the quick start's settings, ``python -m launch.train``'s defaults)
  seeds=1,2,3      each arm runs once per seed, sync then async, so load on a shared machine
                   falls on both arms alike
  max_staleness=1  ``trainer.max_staleness`` of the async arm
  correction=tis   ``learner.off_policy_correction`` of the async arm
  test_size=N      held-out (test split) questions scored after each run (default: all)
  out=DIR          where the JSON, the markdown table and the plot go (default: the run dir)
  run_dir=DIR      the runs (default: runs/async-learning-<time>)

The async arm also sets ``learner.num_threads=1`` so that the learner and the rollout engine
each keep a core on a small machine (docs/training.md, "Threads on a 2-core machine"); the
sync arm keeps the preset's threads. Both arms run on one Ray cluster with one retrieval and
rollout group (each run pushes its own weights first), a fresh learner and reward group per
run. Writes ``async_learning.json``
(``{"sync": [{"seed", "em", "f1", ...}], "async": [...], "sync_wall_s", "async_wall_s", ...}``,
walls are means over seeds of the training time: setup, critic warmup, steps and
validations, not the test scoring), ``async_learning.md`` and ``async_learning.png``
(validation EM against wall-clock seconds, every seed).
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from actors.cluster import init_ray
from actors.session import Session
from launch.cli import run_tool, split_tool_args
from launch.config import load_config
from launch.experiments.toyworld_learning import _ints, evaluate_rows, held_out, run_arm
from launch.train import TIME_ELAPSED, _prepare_inputs
from workers.config import Config, ConfigError
from workers.data.rows import read_rows
from workers.evaluation import EVAL_EM
from workers.tracking import read_metrics

logger = logging.getLogger("launch.experiments.async_learning")

TOOL_ARGS = ("sft_policy", "preset", "seeds", "max_staleness", "correction", "test_size", "out", "run_dir")
PRESETS = {"toyworld_learning": ["+experiment=toyworld_learning"], "quickstart": []}
ARMS = ("sync", "async")


def arm_overrides(arm: str, max_staleness: int, correction: str) -> list[str]:
    """The settings that make an arm (the rest of the config is shared)."""
    if arm == "sync":
        return ["trainer.async_rollout=false"]
    return ["trainer.async_rollout=true", f"trainer.max_staleness={max_staleness}",
            f"learner.off_policy_correction={correction}", "learner.num_threads=1"]


def training_wall(run: dict[str, Any]) -> float:
    """Seconds from the run's setup to its last logged step (its test scoring excluded)."""
    records = read_metrics(Path(run["run_dir"]) / "metrics.jsonl")
    return max((r[TIME_ELAPSED] for r in records if TIME_ELAPSED in r), default=0.0)


def em_curve(run: dict[str, Any]) -> list[tuple[float, float]]:
    """(seconds since the run's setup, validation EM): the warm start at 0, then each validation."""
    records = read_metrics(Path(run["run_dir"]) / "metrics.jsonl")
    return [(r.get(TIME_ELAPSED, 0.0) if r["step"] else 0.0, r[EVAL_EM]) for r in records if EVAL_EM in r]


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| arm | test EM | test F1 | searches | training wall (s) |", "|---|---|---|---|---|"]
    start = results["warm_start"]
    lines.append(f"| warm start | {start['em']:.3f} | {start['f1']:.3f} | {start['searches']:.2f} | |")
    for arm in ARMS:
        runs = results[arm]
        cells = []
        for key, fmt in (("em", "{:.3f}"), ("f1", "{:.3f}"), ("searches", "{:.2f}"), ("wall_s", "{:.0f}")):
            values = [r[key] for r in runs]
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            cells.append(f"{fmt.format(statistics.fmean(values))} ± {fmt.format(spread)}")
        label = arm if arm == "sync" else f"async (k={results['max_staleness']}, {results['correction']})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    mean_em = {arm: statistics.fmean(r["em"] for r in results[arm]) for arm in ARMS}
    gap = 100 * (mean_em["async"] - mean_em["sync"])
    lines += ["", f"Mean test EM, async minus sync: {gap:+.1f} points over {results['test_questions']} test "
                  f"questions and seeds {','.join(str(r['seed']) for r in results['sync'])}; training wall "
                  f"sync {results['sync_wall_s']:.0f} s, async {results['async_wall_s']:.0f} s "
                  f"({results['sync_wall_s'] / max(results['async_wall_s'], 1e-9):.2f}x).",
              "", "Per seed (test EM / F1): " + "; ".join(
                  f"{arm} seed {r['seed']}: {r['em']:.3f} / {r['f1']:.3f}" for arm in ARMS for r in results[arm])]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any], out: Path) -> Path:
    """Validation EM against wall-clock seconds: one thin line per seed, one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, arm in enumerate(ARMS):
        for j, run in enumerate(results[arm]):
            xs, ys = zip(*run["curve"], strict=True) if run["curve"] else ((), ())
            ax.plot(xs, ys, color=f"C{i}", marker="o", alpha=0.7, label=arm if j == 0 else None)
    ax.set_xlabel("wall-clock seconds since the run's setup")
    ax.set_ylabel("validation EM")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def experiment(cfg: Config, args: dict[str, str], overrides: list[str], base: list[str]) -> dict[str, Any]:
    policy = args.get("sft_policy")
    if not policy or not (Path(policy) / "config.json").is_file():
        raise ConfigError("sft_policy", f"needs a Hugging Face model directory (with config.json), got {policy!r}")
    seeds = _ints(args.get("seeds", "1,2,3"), "seeds")
    k = _ints(args.get("max_staleness", "1"), "max_staleness")[0]
    correction = args.get("correction", "tis")
    if not seeds:
        raise ConfigError("seeds", "needs at least one value")
    overrides = [*overrides, f"model.path={policy}"]
    cfg = replace(cfg, model=replace(cfg.model, path=policy))
    cfgs = {(arm, seed): load_config([*base, *overrides, *arm_overrides(arm, k, correction), f"seed={seed}"])
            for seed in seeds for arm in ARMS}  # every config error before any work
    run_root = Path(args.get("run_dir") or f"runs/async-learning-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(args.get("out") or run_root)
    run_root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    init_ray(cfg.cluster, quiet=not cfg.trainer.verbose)
    cfg, _ = _prepare_inputs(cfg)
    data_dir = Path(cfg.data.output_dir)
    test_rows = read_rows(data_dir / f"test.{cfg.data.format}")
    if "test_size" in args:
        test_rows = test_rows[: _ints(args["test_size"], "test_size")[0]]
    val_rows = read_rows(data_dir / f"validation.{cfg.data.format}")[: cfg.trainer.eval_size]
    shared = Session(cfg, policy)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    try:
        shared.start_rollout()
        warm_test = held_out(evaluate_rows(shared, test_rows))
        warm_val = evaluate_rows(shared, val_rows)
        print(f"warm start {policy}: test {json.dumps({k: v for k, v in warm_test.items() if k != 'by_hops'})}")
        for seed in seeds:
            for arm in ARMS:
                arm_cfg, _ = _prepare_inputs(cfgs[(arm, seed)])
                result = run_arm(arm_cfg, run_root / f"{arm}-seed{seed}", policy, shared, test_rows, warm_val)
                result["wall_s"] = training_wall(result)
                result["curve"] = em_curve(result)
                runs[arm].append(result)
                print(f"{arm} seed {seed}: test EM {result['em']:.4f} F1 {result['f1']:.4f}, "
                      f"training wall {result['wall_s']:.0f} s")
    finally:
        shared.stop()
    results: dict[str, Any] = {
        "sync": runs["sync"], "async": runs["async"],
        "sync_wall_s": statistics.fmean(r["wall_s"] for r in runs["sync"]),
        "async_wall_s": statistics.fmean(r["wall_s"] for r in runs["async"]),
        "warm_start": {**warm_test, "policy": policy},
        "preset": args.get("preset", "toyworld_learning"), "max_staleness": k, "correction": correction,
        "steps": cfg.trainer.total_steps, "test_questions": len(test_rows),
        "wall_s": time.perf_counter() - started,
        "command": " ".join(["python -m launch.experiments.async_learning", *sys.argv[1:]]),
    }
    (out / "async_learning.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "async_learning.md").write_text(markdown_table(results))
    plot_curves(results, out / "async_learning.png")
    print(markdown_table(results))
    print(f"results: {out / 'async_learning.json'}  plot: {out / 'async_learning.png'}")
    return results


def main(argv: list[str] | None = None) -> int:
    args, overrides = split_tool_args(sys.argv[1:] if argv is None else argv, TOOL_ARGS)
    preset = args.get("preset", "toyworld_learning")
    if preset not in PRESETS:
        print(f"config error: preset: must be one of {', '.join(PRESETS)}, got {preset!r}", file=sys.stderr)
        return 2
    base = PRESETS[preset]

    def run(cfg: Config) -> int:
        experiment(cfg, args, overrides, base)
        return 0

    return run_tool(run, [*base, *overrides], __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())
