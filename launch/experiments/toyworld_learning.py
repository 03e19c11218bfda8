"""Does it learn? SFT warm start, then StePPO vs outcome-only PPO on toyworld, several seeds.

    python -m launch.experiments.toyworld_learning                         # the whole experiment
    python -m launch.experiments.toyworld_learning sft_policy=DIR          # reuse an SFT policy
    python -m launch.experiments.toyworld_learning seeds=1 trainer.total_steps=2 sft.epochs=0.1

Tool arguments (top-level keys; every other key=value is a Hydra override applied on top
of ``+experiment=toyworld_learning``):
  sft_policy=DIR   start RL from this Hugging Face policy instead of running SFT first
  seeds=1,2,3      RL seeds; each arm runs once per seed, same steps
  arms=stepsearch,outcome_only   reward presets to compare
  test_size=N      held-out (test split) questions scored before and after RL (default: all)
  out=DIR          where the JSON, the markdown table and the plot go (default: the run dir)
  run_dir=DIR      runs of SFT and of every arm (default: runs/learning-<time>)

Runs in the user's process on one Ray cluster: one retrieval group and one rollout group
serve SFT and every RL run (each run pushes its own weights first), a fresh learner and
reward group per run. Every run writes its usual ``metrics.jsonl``; held-out numbers come
from the test split, which nothing here tunes on (curves use the validation split).
Writes ``toyworld_learning.json``, ``toyworld_learning.md`` and ``toyworld_learning.png``.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from actors.cluster import init_ray
from actors.session import Session
from actors.trainer import StePPOTrainer
from launch.cli import run_tool, split_tool_args
from launch.config import load_config
from launch.report import print_step, progress_bar
from launch.sft import run_sft
from launch.train import TIME_ELAPSED, _prepare_inputs, warm_up_critic
from workers.config import Config, ConfigError
from workers.data.rows import QARow, read_rows
from workers.evaluation import (
    EVAL_COUNT,
    EVAL_EM,
    EVAL_EMPTY_ANSWER,
    EVAL_F1,
    EVAL_FORMAT_OK,
    EVAL_GOLD_HIT,
    EVAL_REDUNDANCY,
    EVAL_SEARCHES,
    EvalResult,
    hops_key,
)
from workers.tracking import MetricsLogger, read_metrics

logger = logging.getLogger("launch.experiments.toyworld_learning")

EXPERIMENT = "+experiment=toyworld_learning"
TOOL_ARGS = ("sft_policy", "seeds", "arms", "test_size", "out", "run_dir")
REPORTED = {"em": EVAL_EM, "f1": EVAL_F1, "searches": EVAL_SEARCHES, "gold_hit": EVAL_GOLD_HIT,
            "redundancy": EVAL_REDUNDANCY, "format_ok": EVAL_FORMAT_OK, "empty_answer": EVAL_EMPTY_ANSWER}
"""Held-out numbers in the results, by their name there."""
ARM_NAMES = {"stepsearch": "steppo"}
"""Result keys of the reward presets (the rest keep their preset name)."""


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(name, f"expected comma-separated integers, got {text!r}") from exc


BY_HOPS = {"em": EVAL_EM, "f1": EVAL_F1, "gold_hit": EVAL_GOLD_HIT, "count": EVAL_COUNT}
"""Held-out numbers reported per hop count."""
_HOPS_KEY = re.compile(r"eval/(\d+)hop/em")


def held_out(metrics: dict[str, float]) -> dict[str, Any]:
    """The reported subset of an evaluation under its short names, plus ``by_hops``
    (``{"2": {"em", "f1", "gold_hit", "count"}, ...}``) when the rows know their hop counts."""
    out: dict[str, Any] = {name: float(metrics.get(key, 0.0)) for name, key in REPORTED.items()}
    hops = sorted(int(m.group(1)) for m in map(_HOPS_KEY.fullmatch, metrics) if m)
    if hops:
        out["by_hops"] = {str(h): {name: float(metrics.get(hops_key(key, h), 0.0)) for name, key in BY_HOPS.items()}
                          for h in hops}
    return out


def evaluate_rows(session: Session, rows: list[QARow], predictions: Path | None = None) -> dict[str, float]:
    """Greedy rollouts of ``rows`` with the session's current rollout weights; with
    ``predictions``, one JSON line per question there (prediction, scores, trajectory and
    each action's text)."""
    result = session.evaluate(rows, decode=predictions is not None)
    if predictions is not None:
        write_predictions(result, predictions)
    return result.metrics()


def write_predictions(result: EvalResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in result.records:
            fh.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")


def run_arm(cfg: Config, run_dir: Path, policy: str, shared: Session, test_rows: list[QARow],
            start_eval: dict[str, float]) -> dict[str, Any]:
    """One RL run from ``policy`` on the shared session's retrieval and rollout groups;
    validation curve in its metrics, test numbers at the end.

    Leaves the final checkpoint (its ``learner/hf`` is the trained policy) and the test
    predictions (``test_predictions.jsonl``) in ``run_dir``."""
    trainer = StePPOTrainer(replace(cfg, trainer=replace(cfg.trainer, resume="never")), run_dir, policy,
                            reuse=shared)
    tracker = MetricsLogger(run_dir, tensorboard=cfg.trainer.tensorboard, run_name=run_dir.name)
    started = time.perf_counter()
    try:
        trainer.setup()
        tracker.log(0, start_eval)  # the warm start's validation numbers, the curves' first point
        warm_up_critic(trainer, tracker)
        total = cfg.trainer.total_steps
        bar = progress_bar(total, desc=run_dir.name)
        while trainer.step < total:
            metrics = trainer.train_step()
            if trainer.step % cfg.trainer.eval_every == 0 or trainer.step == total:
                metrics.update(trainer.evaluate())
            metrics[TIME_ELAPSED] = time.perf_counter() - started
            tracker.log(trainer.step, metrics)
            print_step(trainer.step, total, metrics, bar)
            bar.update(1)
        bar.close()
        trainer.checkpoint()
        test = held_out(evaluate_rows(trainer.session, test_rows, run_dir / "test_predictions.jsonl"))
    finally:
        tracker.close()
        trainer.shutdown()
    result = {"seed": cfg.seed, **test, "wall_s": time.perf_counter() - started, "run_dir": str(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def sft_run_wall(policy: str) -> float:
    """Wall time of the SFT run a given policy comes from (``<run>/checkpoints/step_N/learner/hf``), else 0."""
    summary = Path(policy).parents[3] / "summary.json" if len(Path(policy).parents) > 3 else None
    if summary is None or not summary.is_file():
        return 0.0
    return float(json.loads(summary.read_text()).get("wall_s", 0.0))


def markdown_table(results: dict[str, Any]) -> str:
    """Held-out numbers before RL and after each arm (mean ± spread over seeds)."""
    lines = ["| policy | EM | F1 | searches / episode | searches hitting gold | redundancy |",
             "|---|---|---|---|---|---|"]
    sft = results["sft"]
    lines.append(f"| SFT warm start | {sft['em']:.3f} | {sft['f1']:.3f} | {sft['searches']:.2f} | "
                 f"{sft['gold_hit']:.3f} | {sft['redundancy']:.3f} |")
    for arm in results["arms"]:
        runs = results[arm]
        cells = []
        for key, fmt in (("em", "{:.3f}"), ("f1", "{:.3f}"), ("searches", "{:.2f}"), ("gold_hit", "{:.3f}"),
                         ("redundancy", "{:.3f}")):
            values = [r[key] for r in runs]
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            cells.append(f"{fmt.format(statistics.fmean(values))} ± {fmt.format(spread)}")
        seeds = ",".join(str(r["seed"]) for r in runs)
        warmup = results.get("critic_warmup_steps", 0)
        plural = "" if warmup == 1 else "s"
        after = f"{warmup} critic warmup step{plural} and {results['steps']}" if warmup else str(results["steps"])
        lines.append(f"| after {after} steps of {arm} (seeds {seeds}) | " + " | ".join(cells) + " |")
    lines.append("")
    means = {arm: statistics.fmean(r["em"] for r in results[arm]) for arm in results["arms"]}
    lines.append("Mean test EM minus the warm start's: " + "; ".join(
        f"{arm} {100 * (em - sft['em']):+.1f} points" for arm, em in means.items()) + ".")
    lines.append("")
    lines.append("Per seed (test EM / F1): " + "; ".join(
        f"{arm} seed {r['seed']}: {r['em']:.3f} / {r['f1']:.3f}" for arm in results["arms"] for r in results[arm]))
    lines.extend(_hops_table(results))
    return "\n".join(lines) + "\n"


def _hops_table(results: dict[str, Any]) -> list[str]:
    """Test EM by number of hops (mean over seeds), when every run reported it."""
    policies = [("SFT warm start", [results["sft"]])] + [(arm, results[arm]) for arm in results["arms"]]
    if not all("by_hops" in r for _, runs in policies for r in runs):
        return []
    hops = sorted({h for _, runs in policies for r in runs for h in r["by_hops"]}, key=int)
    counts = {h: int(results["sft"]["by_hops"].get(h, {}).get("count", 0)) for h in hops}
    lines = ["", "Test EM by number of hops (mean over seeds):", "",
             "| policy | " + " | ".join(f"{h}-hop (n={counts[h]})" for h in hops) + " |",
             "|---|" + "---|" * len(hops)]
    for name, runs in policies:
        cells = [statistics.fmean(r["by_hops"][h]["em"] for r in runs) if all(h in r["by_hops"] for r in runs)
                 else None for h in hops]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return lines


CURVES = (
    ("validation F1", "eval/f1"),
    ("validation EM", "eval/em"),
    ("validation: searches hitting gold", "eval/gold_hit"),
    ("validation: redundancy", "eval/redundancy"),
    ("train rollouts: answer F1", "reward/answer_f1"),
    ("train rollouts: outcome reward", "reward/outcome"),
    ("train rollouts: information gain (StePPO)", "reward/info_gain"),
    ("train rollouts: redundancy penalty (StePPO)", "reward/redundancy"),
)


def plot_arms(runs: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    """One panel per curve: every seed thin, the mean over seeds thick, one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax, (title, key) in zip(axes.flat, CURVES, strict=True):
        for i, (arm, arm_runs) in enumerate(runs.items()):
            color = f"C{i}"
            series = []
            for run in arm_runs:
                points = [(r["step"], r[key]) for r in read_metrics(Path(run["run_dir"]) / "metrics.jsonl") if key in r]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, color=color, alpha=0.3, linewidth=1)
                    series.append(dict(points))
            steps = sorted(set().union(*series)) if series else []
            means = [statistics.fmean(s[x] for s in series if x in s) for x in steps]
            if steps:
                ax.plot(steps, means, color=color, linewidth=2.5, label=arm)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def seeds_and_arms(args: dict[str, str]) -> tuple[list[int], list[str]]:
    """The ``seeds=`` and ``arms=`` tool arguments (defaults: 1,2,3 and both reward presets)."""
    seeds = _ints(args.get("seeds", "1,2,3"), "seeds")
    arms = [a for a in args.get("arms", "stepsearch,outcome_only").split(",") if a]
    if not seeds or not arms:
        raise ConfigError("seeds" if not seeds else "arms", "needs at least one value")
    return seeds, arms


def experiment(cfg: Config, args: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """SFT (unless given), the SFT policy's held-out numbers, then every arm x seed."""
    seeds, arms = seeds_and_arms(args)
    policy = args.get("sft_policy")
    if policy:
        if not (Path(policy) / "config.json").is_file():
            raise ConfigError("sft_policy", f"{policy} is not a Hugging Face model directory (no config.json)")
        overrides = [*overrides, f"model.path={policy}"]  # the tiny policy need not be built
        cfg = replace(cfg, model=replace(cfg.model, path=policy))
    run_root = Path(args.get("run_dir") or f"runs/learning-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(args.get("out") or run_root)
    run_root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    arm_cfgs = {(arm, seed): load_config([EXPERIMENT, *overrides, f"reward={arm}", f"seed={seed}"])
                for arm in arms for seed in seeds}  # every config error before any work
    started = time.perf_counter()
    init_ray(cfg.cluster, quiet=not cfg.trainer.verbose)
    cfg, base_policy = _prepare_inputs(cfg)
    data_dir = Path(cfg.data.output_dir)
    test_rows = read_rows(data_dir / f"test.{cfg.data.format}")
    if "test_size" in args:
        test_rows = test_rows[: _ints(args["test_size"], "test_size")[0]]
    val_rows = read_rows(data_dir / f"validation.{cfg.data.format}")[: cfg.trainer.eval_size]
    shared = Session(cfg, policy or base_policy)  # one retrieval and rollout group for every run
    try:
        shared.start_rollout()
        sft_wall = sft_run_wall(policy) if policy else 0.0
        if policy is None:
            summary = run_sft(cfg, run_root / "sft", reuse=shared)  # leaves its final weights in the rollout
            policy, sft_wall = summary["policy"], summary["wall_s"]
        logger.info("scoring the warm start on %d test and %d validation questions", len(test_rows), len(val_rows))
        sft_test = held_out(evaluate_rows(shared, test_rows, run_root / "sft_test_predictions.jsonl"))
        sft_val = evaluate_rows(shared, val_rows)
        print(f"SFT policy {policy}: test {json.dumps(sft_test)}")
        runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
        for seed in seeds:  # seeds outermost: a partial experiment still compares the arms
            for arm in arms:
                arm_cfg = arm_cfgs[(arm, seed)]  # the warm start, not a tiny policy of this seed
                arm_cfg, _ = _prepare_inputs(replace(arm_cfg, model=replace(arm_cfg.model, path=policy)))
                result = run_arm(arm_cfg, run_root / f"{arm}-seed{seed}", policy, shared, test_rows, sft_val)
                runs[arm].append(result)
                print(f"{arm} seed {seed}: test {json.dumps({k: round(result[k], 4) for k in REPORTED})}")
    finally:
        shared.stop()
    results: dict[str, Any] = {
        "sft": {**sft_test, "policy": policy, "wall_s": sft_wall},
        **{ARM_NAMES.get(arm, arm): runs[arm] for arm in arms},
        "arms": [ARM_NAMES.get(arm, arm) for arm in arms],
        "steps": cfg.trainer.total_steps,
        "critic_warmup_steps": cfg.trainer.critic_warmup_steps,
        "test_questions": len(test_rows),
        "wall_s": time.perf_counter() - started,
        "sft_included": "sft_policy" not in args,
        "command": " ".join(["python -m launch.experiments.toyworld_learning", *sys.argv[1:]]),
    }
    write_results(results, {ARM_NAMES.get(arm, arm): runs[arm] for arm in arms}, out)
    return results


def write_results(results: dict[str, Any], runs: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """The JSON, the markdown table and the plot in ``out``; the table and paths printed."""
    (out / "toyworld_learning.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "toyworld_learning.md").write_text(markdown_table(results))
    plot_arms(runs, out / "toyworld_learning.png")
    print(markdown_table(results))
    print(f"results: {out / 'toyworld_learning.json'}  plot: {out / 'toyworld_learning.png'}  "
          f"wall {results['wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args, overrides = split_tool_args(sys.argv[1:] if argv is None else argv, TOOL_ARGS)
    def run(cfg: Config) -> int:
        experiment(cfg, args, overrides)
        return 0

    return run_tool(run, [EXPERIMENT, *overrides], __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())
