"""Asynchronous rollout: the next batches are generated while the learner updates.

Runs in the driver process, beside ``actors.trainer.StePPOTrainer`` (``trainer.async_rollout=true``).
One driver thread rolls out and scores; the main thread runs the learner. The rollout and
reward actors and the learner actors are separate processes, so the two sides overlap.

Schedule (k = ``trainer.max_staleness``): the batch trained at step s (the learner then holds
policy version s-1) was sampled by version ``max(0, s-1-k)``. At the start of step s the
batches up to s+k-1 are complete, the learner's version s-1 is pushed to the rollout workers,
and the rollout of step s+k starts in the thread while the learner updates on batch s.

- Weights change only between two rollout batches (no batch is in flight during a push):
  every trajectory, every token of it, comes from one version (``TrajectoryBatch.policy_version``),
  and a re-run chunk (actor killed) gets the same weights as the rest of its batch.
- The schedule does not depend on timing, so an async run is reproducible, and a resumed
  run ends where an uninterrupted one does: a checkpoint waits for the batch in flight and
  saves the k finished batches (``async_pending.pkl``); a resume trains on them.
- A batch more than k versions behind the learner (only possible after a resume with a
  smaller ``max_staleness``) is regenerated, not dropped: the same prompts and seed with the
  current weights, so no question, hard or easy, is lost. A batch waits for its longest
  episode, so hard (3+ hop) questions are never starved; ``async/hard_trained`` counts them.
"""

from __future__ import annotations

import logging
import pickle
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from workers.data.rows import QARow
from workers.seeds import mix_seed

if TYPE_CHECKING:
    from actors.trainer import StePPOTrainer

logger = logging.getLogger(__name__)

PENDING_FILE = "async_pending.pkl"
"""The finished rollout batches a checkpoint carries (steps after its own)."""

STALENESS = "async/staleness"
"""Learner version minus the version that sampled the trained batch."""
POLICY_VERSION = "async/policy_version"
REGENERATED = "async/regenerated"
"""1 when the step's batch was over the bound and rolled out again with the current weights."""
HARD_TRAINED = "async/hard_trained"
"""Trajectories of 3+ hop questions in the trained batch."""
TIME_WAIT = "time/rollout_wait_s"
"""Time the learner waited for the step's batch (0 when the rollout kept ahead)."""

HARD_HOPS = 3


@dataclass
class PendingBatch:
    """One step's prompts and, once rolled out and scored, its ObjectRefs and metrics."""

    step: int
    rows: list[QARow]
    seed: int
    version: int = -1
    traj_ref: Any = None
    reward_ref: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    future: Future | None = None


class AsyncRollout:
    """The rollout side of the async loop; ``train_step`` is one StePPO step of the trainer."""

    def __init__(self, trainer: StePPOTrainer) -> None:
        self.trainer = trainer
        self.k = trainer.cfg.trainer.max_staleness
        self.pending: dict[int, PendingBatch] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="async-rollout")
        self.max_staleness_seen = 0
        self.last_trained: PendingBatch | None = None

    # ------------------------------------------------------------------ rollout side

    def _launch(self, step: int) -> PendingBatch:
        """Sample step ``step``'s prompts (in step order) and roll them out in the thread."""
        t = self.trainer
        rows = t.sampler.next_batch(t.cfg.trainer.batch_size)
        batch = PendingBatch(step, rows, mix_seed(t.cfg.seed, step - 1))
        batch.future = self._pool.submit(self._produce, batch)
        self.pending[step] = batch
        return batch

    def _produce(self, batch: PendingBatch) -> PendingBatch:
        from actors.trainer import TIME_REWARD, TIME_ROLLOUT

        t = self.trainer
        assert t.rollout_group is not None
        # The only user of the rollout and reward groups while it runs: the main thread waits
        # for it (``drain``) before it pushes weights, evaluates or checkpoints.
        batch.version = t.rollout_group.version
        started = time.perf_counter()
        batch.traj_ref = t.rollout(batch.rows, seed=batch.seed)
        metrics = dict(t.rollout_group.metrics())
        rolled = time.perf_counter()
        batch.reward_ref, stats = t.score(batch.traj_ref)
        metrics.update(stats)
        metrics[TIME_ROLLOUT], metrics[TIME_REWARD] = rolled - started, time.perf_counter() - rolled
        batch.metrics = metrics
        return batch

    def _finished(self, step: int) -> PendingBatch:
        """Step ``step``'s batch, rolled out (launched now if it never was)."""
        batch = self.pending.get(step) or self._launch(step)
        if batch.future is not None:
            batch.future.result()  # re-raises the thread's error (PhaseTimeout, restart budget, ...)
            batch.future = None
        return batch

    def drain(self) -> None:
        """Wait for the batch in flight (before a weight push, an evaluation or a checkpoint)."""
        for step in sorted(self.pending):
            self._finished(step)

    def push_current(self) -> float:
        """The learner's weights to the rollout workers when they are behind; returns the seconds."""
        t = self.trainer
        assert t.rollout_group is not None
        if t.rollout_group.version == t.step:
            return 0.0
        self.drain()
        started = time.perf_counter()
        t.sync_weights()
        return time.perf_counter() - started

    # ------------------------------------------------------------------ one step

    def train_step(self) -> dict[str, float]:
        """One step: take batch s (waiting if needed), push version s-1, start the rollout of
        step s+k, update on batch s."""
        from actors.trainer import TIME_DRIVER, TIME_LEARN, TIME_STEP, TIME_SYNC

        t = self.trainer
        started = time.perf_counter()
        s = t.step + 1
        for step in range(s, s + self.k):  # batches s..s+k-1 exist before the push
            self._finished(step)
        waited = time.perf_counter() - started
        batch = self.pending.pop(s)
        regenerated = t.step - batch.version > self.k
        if regenerated:
            batch = self._regenerate(batch)
        sync_s = self.push_current()
        if s + self.k not in self.pending and s + self.k <= t.cfg.trainer.total_steps:
            self._launch(s + self.k)
        assert t.learner is not None
        n = len(batch.rows) * t.cfg.rollout.n_samples
        learn_started = time.perf_counter()
        parts = t.learner.forward(batch.traj_ref, n)
        metrics = dict(batch.metrics)
        metrics.update(t.update(batch.traj_ref, batch.reward_ref, n, True, parts))
        learn_s = time.perf_counter() - learn_started
        staleness = t.step - batch.version
        self.max_staleness_seen = max(self.max_staleness_seen, staleness)
        self.last_trained = batch
        t.step += 1
        total = time.perf_counter() - started
        hard = _hard(batch.rows) * t.cfg.rollout.n_samples
        metrics.update({STALENESS: float(staleness), POLICY_VERSION: float(batch.version),
                        REGENERATED: float(regenerated), HARD_TRAINED: float(hard),
                        TIME_WAIT: waited, TIME_SYNC: sync_s, TIME_LEARN: learn_s, TIME_STEP: total,
                        TIME_DRIVER: max(0.0, total - waited - sync_s - learn_s)})
        return metrics

    def _regenerate(self, batch: PendingBatch) -> PendingBatch:
        """Roll a batch over the staleness bound out again (same prompts and seed) with the
        learner's current weights: dropping it would lose its questions."""
        logger.warning("async: step %d's batch came from version %d, more than trainer.max_staleness=%d behind "
                       "version %d; rolling its prompts out again with the current weights",
                       batch.step, batch.version, self.k, self.trainer.step)
        self.push_current()
        fresh = PendingBatch(batch.step, batch.rows, batch.seed)
        self.pending[batch.step] = fresh
        fresh.future = self._pool.submit(self._produce, fresh)
        self._finished(batch.step)
        return self.pending.pop(batch.step)

    # ------------------------------------------------------------------ checkpoint and resume

    def save(self, directory: Path) -> None:
        """The finished batches after this step into ``directory`` (a checkpoint being written)."""
        self.drain()
        out = []
        for step in sorted(self.pending):
            b = self.pending[step]
            out.append({"step": b.step, "rows": b.rows, "seed": b.seed, "version": b.version,
                        "metrics": b.metrics, "traj": ray.get(b.traj_ref), "rewards": ray.get(b.reward_ref)})
        with open(directory / PENDING_FILE, "wb") as f:
            pickle.dump(out, f)

    def load(self, checkpoint: Path) -> None:
        """Take back the batches a checkpoint carries (none in a checkpoint of a sync run)."""
        self.pending.clear()
        path = checkpoint / PENDING_FILE
        if not path.exists():
            return
        with open(path, "rb") as f:
            saved = pickle.load(f)  # written by this project's own checkpoint
        for item in saved:
            self.pending[item["step"]] = PendingBatch(
                item["step"], item["rows"], item["seed"], item["version"], ray.put(item["traj"]),
                ray.put(item["rewards"]), item["metrics"])
        logger.info("async: %d rolled-out batches taken from %s", len(saved), checkpoint)

    def close(self) -> None:
        """Stop the thread (a batch in flight is waited for; its error no longer matters)."""
        for batch in self.pending.values():
            if batch.future is not None:
                try:
                    batch.future.result()
                except Exception as exc:  # the run is ending anyway
                    logger.debug("async: batch %d ended with %s at shutdown", batch.step, exc)
        self._pool.shutdown(wait=True)


def _hard(rows: list[QARow]) -> int:
    return sum(1 for r in rows if r.num_hops >= HARD_HOPS)
