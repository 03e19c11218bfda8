"""The StePPO driver: prompts -> rollout -> reward -> learner update -> weight sync (DESIGN.md 3).

Runs in the driver process (``launch.train``). It holds ObjectRefs, never a batch's
tensors: trajectories go from the rollout actors to the reward and learner actors by
reference, and only small metric dicts come back. Each step reads as its named parts:
``rollout``, ``score``, ``update``, ``sync_weights``, then ``evaluate`` and
``checkpoint`` every k steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from actors.async_loop import AsyncRollout
from actors.learner import LearnerFailure, LearnerGroup
from actors.retrieval import RetrievalGroup
from actors.reward import RewardGroup
from actors.rollout import RolloutGroup
from actors.session import Session
from workers.config import Config, ConfigError
from workers.data.loader import PromptSampler
from workers.data.rows import QARow, read_rows
from workers.learner.data import ppo_optimizer_steps
from workers.reward import RewardTotals
from workers.run_identity import IDENTITY_KEY, read_state, run_identity
from workers.seeds import mix_seed
from workers.tracking import latest_checkpoint

logger = logging.getLogger(__name__)

TIME_ROLLOUT = "time/rollout_s"
TIME_REWARD = "time/reward_s"
TIME_LEARN = "time/learn_s"
TIME_SYNC = "time/sync_s"
TIME_STEP = "time/step_s"
TIME_DRIVER = "time/driver_overhead_s"


__all__ = ["LearnerFailure", "PhaseTimeout", "StePPOTrainer", "check_fits", "required_resources"]


class PhaseTimeout(RuntimeError):
    """A phase of the step waited longer than its ``trainer.*_timeout_s``."""


def required_resources(cfg: Config) -> dict[str, float]:
    """CPUs and GPUs the job's actors reserve (placement is checked before any actor starts)."""
    r, ro, rw, ln = cfg.retrieval, cfg.rollout, cfg.reward, cfg.learner
    learner_sets = 1 if (ln.colocate_critic or ln.advantage_estimator != "gae") else 2
    cpus = (r.num_replicas * r.num_cpus + ro.num_workers * ro.num_cpus_per_worker
            + rw.num_workers * 1.0 + learner_sets * ln.num_ranks * ln.num_cpus_per_rank)
    gpus = (r.num_replicas * r.num_gpus + ro.num_workers * ro.num_gpus_per_worker
            + learner_sets * ln.num_ranks * ln.num_gpus_per_rank)
    return {"CPU": cpus, "GPU": gpus}


def check_fits(cfg: Config, available: dict[str, float]) -> None:
    """Refuse worker counts the cluster cannot hold, naming the fields to change."""
    need = required_resources(cfg)
    for kind, amount in need.items():
        have = float(available.get(kind, 0.0))
        if amount > have + 1e-9:
            raise ConfigError(
                "rollout.num_workers" if kind == "CPU" else "rollout.num_gpus_per_worker",
                f"the job needs {amount:g} {kind} (retrieval {cfg.retrieval.num_replicas}, rollout "
                f"{cfg.rollout.num_workers}, reward {cfg.reward.num_workers}, learner ranks "
                f"{cfg.learner.num_ranks}) but the cluster has {have:g}; lower the worker counts or "
                f"their num_cpus/num_gpus")


class StePPOTrainer:
    """StePPO as named steps over a ``Session`` (which owns the actor groups); holds the
    loop state (step, prompt position)."""

    def __init__(self, cfg: Config, run_dir: Path, model_path: str, *, reuse: Session | None = None) -> None:
        """``reuse``: a running session whose retrieval and rollout groups this run uses
        (an experiment running several arms on one set of engines); they get this run's
        initial weights at ``setup`` and stay up at ``shutdown``."""
        self.cfg, self.run_dir, self.model_path = cfg, run_dir, model_path
        self.step = 0
        data_dir = Path(cfg.data.output_dir)
        self.train_rows = read_rows(data_dir / f"train.{cfg.data.format}")
        val_path = data_dir / f"validation.{cfg.data.format}"
        self.eval_rows: list[QARow] = read_rows(val_path)[: cfg.trainer.eval_size] if val_path.exists() else []
        self.sampler = PromptSampler(self.train_rows, seed=cfg.seed)
        self.session = Session(cfg, model_path, reuse=reuse)
        self.async_rollout: AsyncRollout | None = None  # trainer.async_rollout

    @property
    def retrieval(self) -> RetrievalGroup | None:
        return self.session.retrieval

    @property
    def rollout_group(self) -> RolloutGroup | None:
        return self.session.rollout_group

    @property
    def reward(self) -> RewardGroup | None:
        return self.session.reward

    @property
    def learner(self) -> LearnerGroup | None:
        return self.session.learner

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Start the actors: retrieval first (rollout workers call it), then the rest."""
        cfg, session = self.cfg, self.session
        reused = session.rollout_group is not None
        session.start_rollout()
        session.start_reward()
        optimizer_steps = ppo_optimizer_steps(cfg.trainer.total_steps, cfg.trainer.batch_size * cfg.rollout.n_samples,
                                              cfg.learner.mini_batch_size, cfg.learner.ppo_epochs)
        session.start_learner(cfg.learner, total_steps=optimizer_steps, group_size=cfg.rollout.n_samples,
                              temperature=cfg.rollout.temperature, broadcast=cfg.rollout.weight_sync == "broadcast")
        if reused:  # it may hold another run's weights
            self.sync_weights()
        if cfg.trainer.async_rollout:
            self.async_rollout = AsyncRollout(self)

    def resume(self, path: Path | None = None) -> Path | None:
        """Continue from the checkpoint ``path`` (default: what ``trainer.resume`` names;
        auto: the newest complete checkpoint of the run)."""
        mode = self.cfg.trainer.resume
        if path is None and mode == "never":
            return None
        if path is None:
            path = latest_checkpoint(self.run_dir) if mode == "auto" else Path(mode)
        if path is None:
            logger.warning("no complete checkpoint in %s: starting from step 0", self.run_dir)
            return None
        if not (path / "trainer_state.json").exists():
            raise ConfigError("trainer.resume", f"{path} is not a complete checkpoint")
        state = read_state(path)
        self.session.load_checkpoint(path)
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.sync_weights()
        if self.async_rollout is not None:
            self.async_rollout.load(path)
        logger.info("resumed from %s at step %d", path, self.step)
        return path

    # ------------------------------------------------------------------ one step

    def rollout(self, rows: list[QARow], *, greedy: bool = False, seed: int | None = None) -> Any:
        """Trajectories of ``rows`` as an ObjectRef (waits until they exist)."""
        return self.session.rollout(rows, greedy=greedy, seed=seed)

    def score(self, traj_ref: Any) -> tuple[Any, dict[str, float]]:
        """Token rewards (ObjectRef) and their batch metrics, summed from the totals each reward
        shard returns beside its rewards. Reward actors that do not answer within
        ``trainer.reward_timeout_s`` are replaced and the batch is scored once more."""
        assert self.reward is not None
        timeout = self.cfg.trainer.reward_timeout_s
        for attempt in (1, 2):
            reward_ref, totals_refs = self.reward.score_with_totals(traj_ref)
            try:
                return reward_ref, sum(ray.get(totals_refs, timeout=timeout), RewardTotals()).metrics()
            except (GetTimeoutError, RayActorError) as exc:  # hung, or died past Ray's restarts
                if attempt == 2:
                    raise PhaseTimeout(f"reward: the reward actors did not score step {self.step + 1}'s batch "
                                       f"within trainer.reward_timeout_s={timeout:g} s, twice") from exc
                logger.warning("reward: %s; replacing the reward actors and scoring again",
                               f"no answer within {timeout:g} s" if isinstance(exc, GetTimeoutError)
                               else f"a reward actor died ({type(exc).__name__})")
                self.reward.restart()
        raise AssertionError("unreachable")

    def update(self, traj_ref: Any, reward_ref: Any, batch_size: int, update_policy: bool = True,
               parts: list[Any] | None = None) -> dict[str, float]:
        """One PPO update (``parts``: its forward passes, already started); a dead learner
        rank fails the step with a clear message."""
        assert self.learner is not None
        with self._learner_phase(f"step {self.step + 1}'s update"):
            return self.learner.update(traj_ref, reward_ref, batch_size, update_policy, parts)

    @contextmanager
    def _learner_phase(self, what: str) -> Iterator[None]:
        """A learner failure (rank died, failed or hung) in ``what`` becomes ``LearnerFailure``
        with the resume command."""
        try:
            yield
        except (LearnerFailure, RayError) as exc:
            raise LearnerFailure(
                f"{exc if isinstance(exc, LearnerFailure) else f'learner: {type(exc).__name__}'} during {what}; "
                f"resume with trainer.resume=auto trainer.run_dir={self.run_dir} "
                f"(last checkpoint: {latest_checkpoint(self.run_dir)})") from exc

    def sync_weights(self) -> None:
        """Learner -> every rollout worker, in place; the policy version becomes the step.

        One broadcast from learner rank 0, or with ``rollout.weight_sync=object_store``
        (and the hf engine or an in-process worker) a state dict through the object store."""
        # Rollout actors' deaths are absorbed by the group; what is left is the learner's.
        with self._learner_phase(f"the weight sync of version {self.step}"):
            self.session.push_weights(self.step)

    def train_step(self) -> dict[str, float]:
        """One StePPO step; returns its metrics with the time split."""
        if self.async_rollout is not None:
            return self.async_rollout.train_step()
        return self._step(mix_seed(self.cfg.seed, self.step), update_policy=True)

    def warmup_critic(self, on_step: Callable[[int, dict[str, float]], None] | None = None
                      ) -> list[dict[str, float]]:
        """``trainer.critic_warmup_steps`` rollout batches that train the critic alone.

        Runs only before step 1 (not after a resume); the policy, the rollout weights and
        the step count stay as they were. Returns each warmup step's metrics, also given
        to ``on_step(i, metrics)`` (i from 1) as they come.
        """
        out: list[dict[str, float]] = []
        if self.step > 0:
            return out
        for i in range(self.cfg.trainer.critic_warmup_steps):
            out.append(self._step(mix_seed(self.cfg.seed, -1 - i), update_policy=False))
            if on_step is not None:
                on_step(i + 1, out[-1])
        return out

    def _step(self, seed: int, update_policy: bool) -> dict[str, float]:
        started = time.perf_counter()
        rows = self.sampler.next_batch(self.cfg.trainer.batch_size)
        timed: dict[str, float] = {}
        traj_ref = _timed(timed, TIME_ROLLOUT, lambda: self.rollout(rows, seed=seed))
        assert self.rollout_group is not None
        metrics = dict(self.rollout_group.metrics())
        batch = len(rows) * self.cfg.rollout.n_samples
        assert self.learner is not None  # its forward passes need no rewards: they run during scoring
        parts = self.learner.forward(traj_ref, batch, values_only=not update_policy)
        reward_ref, reward_stats = _timed(timed, TIME_REWARD, lambda: self.score(traj_ref))
        metrics.update(reward_stats)
        metrics.update(_timed(timed, TIME_LEARN,
                              lambda: self.update(traj_ref, reward_ref, batch, update_policy, parts)))
        if update_policy:
            self.step += 1
            _timed(timed, TIME_SYNC, self.sync_weights)
        total = time.perf_counter() - started
        metrics.update(timed)
        metrics[TIME_STEP] = total
        metrics[TIME_DRIVER] = max(0.0, total - sum(timed.values()))
        return metrics

    # ------------------------------------------------------------------ every k steps

    def evaluate(self, rows: list[QARow] | None = None) -> dict[str, float]:
        """Greedy rollouts on ``rows`` (default: the validation prompts), scored for EM/F1/searches."""
        rows = self.eval_rows if rows is None else rows
        if self.async_rollout is not None:  # no batch in flight, and the learner's newest weights
            self.async_rollout.drain()
            self.async_rollout.push_current()
        return self.session.evaluate(rows).metrics() if rows else {}

    def checkpoint(self) -> Path:
        """Learner state + trainer state, visible only once complete."""
        state = {"step": self.step, "sampler": self.sampler.state_dict(), "seed": self.cfg.seed,
                 "model_path": self.model_path, IDENTITY_KEY: run_identity(self.cfg, self.model_path),
                 "config": asdict(self.cfg)}
        with self._learner_phase(f"the checkpoint of step {self.step}"):
            return self.session.checkpoint(self.run_dir, self.step, state,
                                           self.async_rollout.save if self.async_rollout is not None else None)

    def shutdown(self) -> None:
        """Stop the actors this trainer's session started (reused groups stay up)."""
        if self.async_rollout is not None:
            self.async_rollout.close()
        self.session.stop()


def _timed(out: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        return fn()
    finally:
        out[key] = time.perf_counter() - started

