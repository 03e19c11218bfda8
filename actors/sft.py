"""The supervised warm start as named steps over a ``Session``.

Runs in the driver (``launch.sft``, the warm start of ``launch.train``, the experiments).
Gold trajectories come from the dataset's decompositions (``workers.sft.build_gold``) with
the real retriever's documents; the learner actors train on the policy's tokens only;
validation is the session's greedy ``evaluate``. Steps: ``setup`` (retrieval, gold,
learner, rollout), ``train_call``, ``evaluate``, ``checkpoint``; ``run`` is the loop: first
``sft.first_search_steps`` steps on trajectories cut after their first search, then
``sft.epochs`` over whole ones, new entity names every pass with ``sft.rename_entities``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from actors.session import Session
from workers.config import Config, ConfigError
from workers.data.renaming import NamePool
from workers.data.rows import QARow, read_rows
from workers.rollout.worker import concat_trajectories
from workers.sft import build_gold, check_renaming, name_pool, sft_batches, sft_learner_config
from workers.tracking import MetricsLogger

logger = logging.getLogger(__name__)


class SFTTrainer:
    """Owns the SFT loop state (step, passes over the rows) over a ``Session``."""

    def __init__(self, cfg: Config, run_dir: Path, model_path: str, *, reuse: Session | None = None,
                 evaluate: bool = True) -> None:
        """``reuse``: a running session whose retrieval and rollout groups this run uses (and
        leaves running, holding the final weights). ``evaluate=False``: no validation
        rollouts (the caller evaluates the result itself)."""
        self.cfg, self.run_dir, self.model_path = cfg, run_dir, model_path
        data_dir = Path(cfg.data.output_dir)
        self.rows = read_rows(data_dir / f"train.{cfg.data.format}")[: cfg.sft.max_rows]
        val_path = data_dir / f"validation.{cfg.data.format}"
        self.val_rows: list[QARow] = (read_rows(val_path)[: cfg.trainer.eval_size]
                                      if val_path.exists() and evaluate else [])
        check_renaming(cfg, self.rows)
        self.pool: NamePool | None = name_pool(data_dir, self.rows) if cfg.sft.rename_entities else None
        self.session = Session(cfg, model_path, reuse=reuse)
        self.step, self.passes, self.total, self.steps_per_epoch = 0, 0, 0, 0
        self._full: list[Any] = []
        self._first: list[Any] | None = None

    def setup(self) -> None:
        """Retrieval, the first pass's gold trajectories, the learner sized by them, and the
        rollout group when there is validation to run."""
        self.session.start_retrieval()
        self._full = self._build(0, first_only=False)
        self.steps_per_epoch = len(self._full) // self.cfg.sft.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError("sft.batch_size", f"{self.cfg.sft.batch_size} is more than the "
                                                f"{len(self._full)} training rows")
        self.total = self.cfg.sft.first_search_steps + math.ceil(self.cfg.sft.epochs * self.steps_per_epoch)
        self.session.start_learner(sft_learner_config(self.cfg), total_steps=self.total)
        if self.val_rows:
            self.session.start_rollout()
        logger.info("SFT: %d gold trajectories, %d optimizer steps (%d on first searches only)",
                    len(self._full), self.total, self.cfg.sft.first_search_steps)

    def _build(self, rename_pass: int, first_only: bool) -> list[Any]:
        rename = None if self.pool is None else (self.pool, f"sft-names/{self.cfg.seed}/{rename_pass}")
        return build_gold(self.cfg, self.model_path, self.rows, self.session.search, rename, first_only,
                          early_seed=f"sft-early/{self.cfg.seed}/{rename_pass}")

    def gold(self, first_only: bool) -> list[Any]:
        """This pass's gold trajectories: new names every pass when renaming."""
        if first_only:
            if self._first is None or self.pool is not None:
                self._first = self._build(self.passes, first_only=True)
            return self._first
        if self.passes > 0 and self.pool is not None:
            self._full = self._build(self.passes, first_only=False)
        return self._full

    def train_call(self, call: list[Any]) -> dict[str, float]:
        """One learner call over ``call`` (whole optimizer steps); advances ``step``."""
        assert self.session.learner is not None
        batch = concat_trajectories(call)
        tick = time.perf_counter()
        metrics = self.session.learner.sft_update(ray.put(batch))
        tokens = int(batch.prompt_lengths.sum() + batch.response_lengths.sum())
        metrics["sft/tokens_per_s"] = tokens / max(time.perf_counter() - tick, 1e-9)
        done = len(call) // self.cfg.sft.batch_size
        metrics["sft/response_tokens_per_step"] = float(batch.response_lengths.sum()) / done
        self.step += done
        return metrics

    def evaluate(self) -> dict[str, float]:
        """The current weights to the rollout workers (when there are any), then greedy
        validation."""
        if self.session.rollout_group is None:
            return {}
        self.session.push_weights(self.step)
        return self.session.evaluate(self.val_rows).metrics() if self.val_rows else {}

    def checkpoint(self) -> Path:
        """The learner's state as checkpoint ``step`` (its ``learner/hf`` is the policy)."""
        state = {"step": self.step, "model_path": self.model_path, "stage": "sft"}
        return self.session.checkpoint(self.run_dir, self.step, state)

    def run(self) -> dict[str, Any]:
        """The whole warm start; returns the summary also written to ``run_dir/summary.json``."""
        started = time.perf_counter()
        tracker = MetricsLogger(self.run_dir, tensorboard=self.cfg.trainer.tensorboard, run_name=self.run_dir.name)
        result: dict[str, Any] = {"eval": {}, "checkpoint": None}
        try:
            self.setup()
            bar = tqdm(total=self.total, desc="SFT", unit="step", file=sys.stderr, dynamic_ncols=True)
            for first_only, stage_end in ((True, self.cfg.sft.first_search_steps), (False, self.total)):
                while self.step < stage_end:
                    self._pass(first_only, stage_end, tracker, bar, result)
                    self.passes += 1
            bar.close()
        finally:
            tracker.close()
            self.session.stop()
        checkpoint = result["checkpoint"]
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "wall_s": time.perf_counter() - started,
                   "policy": str(checkpoint / "learner" / "hf") if checkpoint else None, "eval": result["eval"]}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _pass(self, first_only: bool, stage_end: int, tracker: MetricsLogger, bar: Any,
              result: dict[str, Any]) -> None:
        """One pass over the gold trajectories, stopping at ``stage_end``; validation and a
        checkpoint every ``sft.eval_every`` steps and at the end (into ``result``)."""
        sft = self.cfg.sft
        for call in sft_batches(self.gold(first_only), self.cfg, self.passes):
            call = call[: (stage_end - self.step) * sft.batch_size]
            if not call:
                return
            metrics = self.train_call(call)
            done = len(call) // sft.batch_size
            if (sft.eval_every and self.step % sft.eval_every < done) or self.step >= self.total:
                result["eval"] = self.evaluate()
                metrics.update(result["eval"])
                result["checkpoint"] = self.checkpoint()
            metrics["sft/first_search_only"] = float(first_only)
            if not first_only:
                metrics["sft/epoch"] = (self.step - sft.first_search_steps) / self.steps_per_epoch
            tracker.log(self.step, metrics)
            bar.update(done)
            bar.set_postfix(loss=f"{metrics.get('sft/loss', float('nan')):.3f}",
                            tok_s=f"{metrics['sft/tokens_per_s']:.0f}",
                            val_em=f"{result['eval'].get('eval/em', float('nan')):.3f}")
