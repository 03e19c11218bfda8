"""Supervised warm start: teach a policy the search protocol from gold trajectories.

    python -m launch.sft                                  # tiny policy on toyworld
    python -m launch.sft sft.epochs=2 sft.lr=1e-5 model=qwen2.5-3b data=musique ...

Gold trajectories come from the dataset's decompositions (``workers.rollout.gold``): one
search per sub-question with the real retriever's documents, then the answer; the loss is
on the policy's tokens only. Training runs on the DeepSpeed learner (same Hydra tree,
``learner.*`` for ranks and ZeRO); validation runs greedy rollouts through the rollout
workers. The result is a Hugging Face directory (``<run dir>/checkpoints/step_N/learner/hf``)
to start StePPO from: ``python -m launch.train model.path=<that directory>``.

This module is the command line; the loop is ``actors.sft.SFTTrainer``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from actors.cluster import init_ray
from actors.session import Session
from actors.sft import SFTTrainer
from launch.config import CONFIG_DIR, register_configs, to_config
from launch.report import SFT_PLOT_GROUPS, write_plots
from launch.train import _prepare_inputs
from workers.config import Config, ConfigError
from workers.sft import build_gold, check_renaming, name_pool, sft_learner_config

__all__ = ["build_gold", "check_renaming", "main", "name_pool", "run_sft", "sft_learner_config"]
"""The helpers moved to ``workers.sft``; their old names here keep working."""

logger = logging.getLogger("launch.sft")


def run_sft(cfg: Config, run_dir: Path, *, model_path: str | None = None, evaluate: bool = True,
            reuse: Session | None = None) -> dict[str, Any]:
    """Prepare the data, connect to Ray and run ``actors.sft.SFTTrainer``; plots at the end.

    ``model_path``: the policy to start from (default: ``model`` resolved as usual);
    ``reuse``: a running session whose retrieval and rollout groups SFT uses."""
    cfg, resolved = _prepare_inputs(cfg)
    init_ray(cfg.cluster, quiet=not cfg.trainer.verbose)
    summary = SFTTrainer(cfg, run_dir, model_path or resolved, reuse=reuse, evaluate=evaluate).run()
    write_plots(run_dir, SFT_PLOT_GROUPS, learning_panel=False)
    return summary


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> float:
    """Hydra entry point; returns the final validation EM."""
    try:
        cfg = to_config(dcfg)
        summary = run_sft(cfg, Path(HydraConfig.get().runtime.output_dir))
        print(f"SFT done: {summary['steps']} steps in {summary['wall_s']:.0f} s; "
              f"validation {json.dumps(summary['eval'])}")
        print(f"policy: {summary['policy']}\nnext:   python -m launch.train model.path={summary['policy']}")
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    return float(summary["eval"].get("eval/em", 0.0))


if __name__ == "__main__":
    register_configs()
    main()
