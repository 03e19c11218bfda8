"""Train a search agent with StePPO on Ray.

    python -m launch.train                                   # tiny CPU preset on toyworld
    python -m launch.train reward=outcome_only seed=3        # the Search-R1-style baseline
    python -m launch.train -m reward=stepsearch,outcome_only seed=1,2    # a Hydra sweep
    python -m launch.train trainer.run_dir=runs/X trainer.resume=auto    # continue a run

Connects to the Ray cluster in ``RAY_ADDRESS`` / ``cluster.address`` or starts a local
one on loopback; prepares toyworld on first use; builds the tiny policy when
``model.path`` is unset. Writes ``metrics.jsonl`` (and TensorBoard) into the run
directory, checkpoints under ``checkpoints/step_N``, plots and ``summary.json`` at the end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from actors.cluster import init_ray
from actors.placement import live_shape, preflight
from actors.session import Session
from actors.trainer import LearnerFailure, PhaseTimeout, StePPOTrainer
from launch.config import CONFIG_DIR, register_configs, to_config
from launch.report import eval_line, print_results, print_step, progress_bar, write_plots
from retrieval_service.http_client import HttpRetrieval
from workers.config import Config, ConfigError
from workers.data.reward_inputs import check_training_rows
from workers.faults import RestartBudgetExceeded
from workers.plan import check_plan
from workers.run_identity import read_state, reconcile
from workers.tracking import MetricsLogger, latest_checkpoint, prune_checkpoints, read_metrics, truncate_metrics

logger = logging.getLogger("launch.train")


def _prepare_inputs(cfg: Config) -> tuple[Config, str]:
    """Dataset on disk (toyworld is generated on first use), the policy path, the corpus path."""
    from launch.prepare_data import prepare
    from workers.policy import resolve_policy_path

    data_dir = Path(cfg.data.output_dir)
    if not (data_dir / f"train.{cfg.data.format}").exists():
        if cfg.data.name != "toyworld":
            raise ConfigError("data.output_dir", f"no prepared rows in {data_dir}: run "
                              f"`python -m launch.prepare_data data={cfg.data.name} data.input_path=...` first")
        logger.info("preparing toyworld in %s", data_dir)
        prepare(cfg.data)
    check_training_rows(cfg)
    if cfg.retrieval.corpus_path is None and cfg.retrieval.index_dir is None:
        cfg = replace(cfg, retrieval=replace(cfg.retrieval, corpus_path=str(data_dir / "corpus.jsonl")))
    return cfg, resolve_policy_path(cfg.model, data_dir, cfg.data.format)


def warm_up_critic(trainer: StePPOTrainer, tracker: MetricsLogger | None = None) -> dict[str, float]:
    """Run ``trainer.critic_warmup_steps`` (fresh runs only), a line per step; returns the
    last step's ``ppo/`` metrics as ``critic_warmup/...`` for the step-0 record (also
    logged to ``tracker`` at step 0 when one is given)."""
    total = trainer.cfg.trainer.critic_warmup_steps
    records = trainer.warmup_critic(lambda i, m: print_step(i, total, m, label="critic warmup"))
    if not records:
        return {}
    last = {f"critic_warmup/{k.split('/', 1)[1]}": v for k, v in records[-1].items() if k.startswith("ppo/")}
    out = {**last, "critic_warmup/steps": float(len(records))}
    if tracker is not None:
        tracker.log(0, out)
    return out


def start_policy(cfg: Config, model_path: str) -> tuple[str, Session | None]:
    """The policy StePPO starts from: ``model.path``, the tiny policy, or its cached SFT
    warm start (``model.warm_start=sft``); with a warm start, the session whose retrieval
    group built it, for the trainer to reuse."""
    if cfg.model.path or cfg.model.warm_start == "none":
        return model_path, None
    from launch.warm_start import ensure_warm_start

    session = Session(cfg, model_path)
    try:
        session.start_retrieval()
        return str(ensure_warm_start(cfg, model_path, session)), session
    except BaseException:
        session.stop()
        raise


def evaluate_start(trainer: StePPOTrainer, run_dir: Path) -> dict[str, float]:
    """Validation of the starting policy (step 0); on a resumed run, read back from the log."""
    if trainer.step == 0:
        return trainer.evaluate() if trainer.cfg.trainer.eval_start else {}
    path = run_dir / "metrics.jsonl"
    first = next((r for r in read_metrics(path) if r.get("step") == 0), {}) if path.exists() else {}
    return {k: v for k, v in first.items() if k.startswith("eval/")}


def resume_point(cfg: Config, run_dir: Path, overrides: Sequence[str] = ()) -> tuple[Config, Path | None]:
    """The checkpoint ``trainer.resume`` names, and ``cfg`` reconciled with it (the
    checkpoint's run-defining settings where the command line gives none; a conflicting
    one is a ``ConfigError``). Runs before any actor starts."""
    mode = cfg.trainer.resume
    if mode == "never":
        return cfg, None
    path = latest_checkpoint(run_dir) if mode == "auto" else Path(mode)
    if path is None:
        print(f"warning: trainer.resume=auto: no complete checkpoint in {run_dir}; starting from step 0",
              file=sys.stderr)
        return cfg, None
    if not (path / "trainer_state.json").exists():
        raise ConfigError("trainer.resume", f"{path} is not a complete checkpoint")
    return reconcile(cfg, read_state(path), path, overrides), path


class StopRequest:
    """SIGTERM or Ctrl-C (``launch.submit --stop`` sends SIGTERM): the step in progress
    finishes, a checkpoint is written, the resume command is printed and the job exits 0.
    Before the loop, or at a second signal, it stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.requested = False
        self.in_loop = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested or not self.in_loop:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.requested = True
        print(f"{signal.Signals(signum).name}: finishing this step, then a checkpoint "
              "(signal again to stop at once)", file=sys.stderr, flush=True)


TIME_ELAPSED = "time/elapsed_s"


def run_steps(trainer: StePPOTrainer, tracker: MetricsLogger, stop: StopRequest,
              clock: float | None = None) -> tuple[Path | None, dict]:
    """The step loop: train, evaluate every k steps and at the end, checkpoint every k steps,
    at the end and when a stop is requested. Returns the last checkpoint and evaluation.
    Each step's record has ``time/elapsed_s``: seconds since ``clock`` (``perf_counter``; the
    start of training in this process), for curves against wall-clock time."""
    cfg = trainer.cfg.trainer
    clock = time.perf_counter() if clock is None else clock
    checkpoint, final_eval, best = None, {}, (float("-inf"), None)
    bar = progress_bar(cfg.total_steps, initial=trainer.step)
    stop.in_loop = True
    while trainer.step < cfg.total_steps and not stop.requested:
        metrics = trainer.train_step()
        last = trainer.step == cfg.total_steps
        if (cfg.eval_every and trainer.step % cfg.eval_every == 0) or last:
            final_eval = trainer.evaluate()
            metrics.update(final_eval)
        metrics[TIME_ELAPSED] = time.perf_counter() - clock
        tracker.log(trainer.step, metrics)
        print_step(trainer.step, cfg.total_steps, metrics, bar)
        if (cfg.save_every and trainer.step % cfg.save_every == 0) or last or stop.requested:
            checkpoint = trainer.checkpoint()
            if "eval/em" in metrics and metrics["eval/em"] > best[0]:
                best = (metrics["eval/em"], trainer.step)
            if cfg.keep_checkpoints:
                prune_checkpoints(trainer.run_dir, cfg.keep_checkpoints, best[1])
        bar.update(1)
    bar.close()
    stop.in_loop = False
    if stop.requested and trainer.step > 0 and (checkpoint is None or checkpoint.name != f"step_{trainer.step:06d}"):
        checkpoint = trainer.checkpoint()  # the signal came after this step's save decision
    return checkpoint, final_eval


def begin(trainer: StePPOTrainer, tracker: MetricsLogger, run_dir: Path, resume_from: Path | None) -> dict:
    """Resume (when asked), evaluate the starting policy, warm up the critic; log step 0."""
    if resume_from is not None:
        trainer.resume(resume_from)
        truncate_metrics(run_dir / "metrics.jsonl", trainer.step)
    tick = time.perf_counter()
    eval_start = evaluate_start(trainer, run_dir)
    if trainer.step == 0 and eval_start:
        print(eval_line("start (step 0)", eval_start, time.perf_counter() - tick))
    step0 = {**eval_start, **warm_up_critic(trainer)} if trainer.step == 0 else {}
    if step0:
        tracker.log(0, step0)
    return eval_start


def write_placement(session: Session, run_dir: Path) -> None:
    """``placement.json``: per actor, where the plan put it and where it runs (node, bundle,
    ``CUDA_VISIBLE_DEVICES``), and per retrieval replica its search calls by caller node."""
    report: dict[str, Any] = {"mode": session.placement.mode if session.placement else None,
                              "actors": session.placement_report()}
    if session.retrieval is not None and session.retrieval.num_replicas:
        report["retrieval_callers"] = session.retrieval.callers()
    (run_dir / "placement.json").write_text(json.dumps(report, indent=1) + "\n")


def train(cfg: Config, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The whole job; returns the summary also written to ``run_dir/summary.json``.

    ``overrides``: the command line's Hydra overrides (a resume checks them against the
    checkpoint's run)."""
    started = time.perf_counter()
    stop = StopRequest()
    cfg, resume_from = resume_point(cfg, run_dir, overrides)
    preflight(cfg)  # launch.plan's check, before a local cluster starts
    if cfg.retrieval.backend == "http":  # an unreachable server stops the job before anything starts
        HttpRetrieval.from_config(cfg.retrieval).wait_ready()
    init_ray(cfg.cluster, quiet=not cfg.trainer.verbose)
    check_plan(cfg, live_shape(cfg))  # the cluster joined or started: before any data or actor work
    stop.install()  # after ray.init, which sets a SIGTERM handler of its own
    cfg, model_path = _prepare_inputs(cfg)
    model_path, warm = start_policy(cfg, model_path)
    trainer = StePPOTrainer(cfg, run_dir, model_path, reuse=warm)
    tracker = MetricsLogger(run_dir, tensorboard=cfg.trainer.tensorboard,
                            wandb_project=cfg.trainer.wandb_project, run_name=run_dir.name)
    try:
        trainer.setup()
        clock = time.perf_counter()
        eval_start = begin(trainer, tracker, run_dir, resume_from)
        checkpoint, final_eval = run_steps(trainer, tracker, stop, clock)
        write_placement(trainer.session, run_dir)
    finally:
        tracker.close()
        trainer.shutdown()
        if warm is not None:
            warm.stop()
    plots = write_plots(run_dir)
    summary = {"run_dir": str(run_dir), "steps": trainer.step, "wall_s": time.perf_counter() - started,
               "checkpoint": str(checkpoint) if checkpoint else None, "plots": [str(p) for p in plots],
               "model_path": model_path, "eval_start": eval_start, "eval": final_eval,
               "reward": cfg.reward.name, "seed": cfg.seed, "stopped": stop.requested}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if stop.requested:
        print(f"stopped at step {trainer.step} with checkpoint {checkpoint}; continue with:\n"
              f"  python -m launch.train trainer.run_dir={run_dir} trainer.resume=auto")
        return summary
    print_results(summary, run_dir)
    return summary


def run_directory(cfg: Config, hydra_dir: Path) -> Path:
    """The run directory; a relative ``trainer.run_dir`` inside a Ray job's temporary
    working directory would be deleted with the job, so it is refused there."""
    if Path(cfg.trainer.run_dir).is_absolute() or "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return hydra_dir
    if "runtime_resources" in Path.cwd().parts:
        raise ConfigError("trainer.run_dir", f"{cfg.trainer.run_dir!r} is relative, and this Ray job runs in a "
                                             f"temporary working directory ({Path.cwd()}) that is deleted with "
                                             "it: give an absolute path (launch.submit adds one)")
    return hydra_dir.resolve()


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> float:
    """Hydra entry point; returns the final validation F1 (for sweepers that optimize it)."""
    hydra_cfg = HydraConfig.get()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]  # lines as they happen, in job logs too
    run_dir: Path | None = None
    try:
        cfg = to_config(dcfg)
        run_dir = run_directory(cfg, Path(hydra_cfg.runtime.output_dir))
        summary = train(cfg, run_dir, list(hydra_cfg.overrides.task))
    except (ConfigError, LearnerFailure, PhaseTimeout, RestartBudgetExceeded) as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed run; the sweep (or an Optuna study) goes on
        print(f"{'config error' if isinstance(exc, ConfigError) else 'error'}: {exc}", file=sys.stderr)
        if isinstance(exc, (PhaseTimeout, RestartBudgetExceeded)) and run_dir is not None:
            print(f"resume with: python -m launch.train trainer.resume=auto trainer.run_dir={run_dir} "
                  f"(last checkpoint: {latest_checkpoint(run_dir)})", file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    return float(summary["eval"].get("eval/f1", 0.0))


if __name__ == "__main__":
    register_configs()
    main()
