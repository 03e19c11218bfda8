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
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from actors.cluster import init_ray
from actors.trainer import LearnerFailure, StePPOTrainer, check_fits
from launch.config import CONFIG_DIR, register_configs, to_config
from launch.report import print_results, print_step, progress_bar, write_plots
from workers.config import Config, ConfigError
from workers.tracking import MetricsLogger

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
    if cfg.retrieval.corpus_path is None and cfg.retrieval.index_dir is None:
        cfg = replace(cfg, retrieval=replace(cfg.retrieval, corpus_path=str(data_dir / "corpus.jsonl")))
    return cfg, resolve_policy_path(cfg.model, data_dir, cfg.data.format)


def warm_up_critic(trainer: StePPOTrainer, tracker: MetricsLogger) -> None:
    """Run ``trainer.critic_warmup_steps`` (fresh runs only), a line per step; the last
    step's ``ppo/`` metrics go to the log at step 0 as ``critic_warmup/...``."""
    total = trainer.cfg.trainer.critic_warmup_steps
    records = trainer.warmup_critic(lambda i, m: print_step(i, total, m, label="critic warmup"))
    if records:
        last = {f"critic_warmup/{k.split('/', 1)[1]}": v for k, v in records[-1].items() if k.startswith("ppo/")}
        tracker.log(0, {**last, "critic_warmup/steps": float(len(records))})


def train(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """The whole job; returns the summary also written to ``run_dir/summary.json``."""
    check_fits(cfg, init_ray(cfg.cluster, logging_level="WARNING"))  # before any data or actor work
    cfg, model_path = _prepare_inputs(cfg)
    trainer = StePPOTrainer(cfg, run_dir, model_path)
    tracker = MetricsLogger(run_dir, tensorboard=cfg.trainer.tensorboard,
                            wandb_project=cfg.trainer.wandb_project, run_name=run_dir.name)
    started, checkpoint, final_eval = time.perf_counter(), None, {}
    try:
        trainer.setup()
        trainer.resume()
        warm_up_critic(trainer, tracker)
        bar = progress_bar(cfg.trainer.total_steps, initial=trainer.step)
        while trainer.step < cfg.trainer.total_steps:
            metrics = trainer.train_step()
            last = trainer.step == cfg.trainer.total_steps
            if (cfg.trainer.eval_every and trainer.step % cfg.trainer.eval_every == 0) or last:
                final_eval = trainer.evaluate()
                metrics.update(final_eval)
            tracker.log(trainer.step, metrics)
            print_step(trainer.step, cfg.trainer.total_steps, metrics, bar)
            if (cfg.trainer.save_every and trainer.step % cfg.trainer.save_every == 0) or last:
                checkpoint = trainer.checkpoint()
            bar.update(1)
        bar.close()
    finally:
        tracker.close()
        trainer.shutdown()
    plots = write_plots(run_dir)
    summary = {"run_dir": str(run_dir), "steps": trainer.step, "wall_s": time.perf_counter() - started,
               "checkpoint": str(checkpoint) if checkpoint else None, "plots": [str(p) for p in plots],
               "eval": final_eval, "reward": cfg.reward.name, "seed": cfg.seed}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_results(summary, run_dir)
    return summary


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> float:
    """Hydra entry point; returns the final validation F1 (for sweepers that optimize it)."""
    hydra_cfg = HydraConfig.get()
    try:
        cfg = to_config(dcfg)
        summary = train(cfg, Path(hydra_cfg.runtime.output_dir))
    except (ConfigError, LearnerFailure) as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed run; the sweep (or an Optuna study) goes on
        print(f"{'config error' if isinstance(exc, ConfigError) else 'error'}: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    return float(summary["eval"].get("eval/f1", 0.0))


if __name__ == "__main__":
    register_configs()
    main()
