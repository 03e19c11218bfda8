"""Driver side of the weight broadcast: form the group, run one sync, recover.

Runs in the driver. The weight-update group joins learner rank 0 (rank 0) and every worker
process of every rollout engine (``workers.weight_sync``). It is formed at the first sync
and re-formed when its members change: an engine restarted by Ray, one that failed a
broadcast, or a catch-up of one restarted engine before its next chunk. An engine dying
mid-broadcast makes the sender fail fast (gloo: the peer closed) or time out
(``rollout.weight_sync_timeout_s``); the learner ranks stay in step, the group is
re-formed with the engines still alive and they get the weights again, so the step goes on.
A learner rank that fails or hangs while sending raises ``LearnerFailure``.
Only the manifest (names, shapes, offsets) crosses Ray.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from actors.learner import LearnerGroup, _rendezvous
from workers.weight_sync import Stopwatch

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
"""Broadcasts per sync: the first, and one to the survivors of a failed one on a new group."""


class BroadcastSync:
    """Brings rollout actors to a policy version by broadcast from learner rank 0."""

    def __init__(self, learner: LearnerGroup, timeout_s: float) -> None:
        self.learner, self.timeout_s = learner, timeout_s
        self._members: tuple[str, ...] | None = None
        self._store_dir: str | None = None
        self._manifest: Any = None
        self.last_bytes = 0
        self.last_seconds: dict[str, float] = {}
        """Driver-side seconds per phase of the last ``sync`` (alive check, group forming, transfer)."""

    def sync(self, version: int, actors: list[Any]) -> list[Any]:
        """Broadcast the learner's policy to ``actors``; returns the actors left behind
        (dead, restarting, or failed twice): they must catch up before generating."""
        done: list[Any] = []
        watch = Stopwatch()
        targets = self._alive(actors)
        watch.lap("alive")
        for attempt in range(MAX_ATTEMPTS):
            if not targets:
                break
            failed = self._broadcast(version, targets, watch)
            done += [a for a in targets if not any(a is f for f in failed)]
            if not failed:
                break
            logger.warning("weight broadcast attempt %d failed for %d of %d engines; re-forming "
                           "the group", attempt + 1, len(failed), len(targets))
            self._members = None
            targets = self._alive(failed)
            watch.lap("alive")
        self.last_seconds = watch.seconds
        return [a for a in actors if not any(a is d for d in done)]

    def _alive(self, actors: list[Any]) -> list[Any]:
        """The actors answering within a few seconds (a restarting one catches up later)."""
        refs = [a.pid.remote() for a in actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=5.0)
        alive = []
        for actor, ref in zip(actors, refs, strict=True):
            if ref in ready:
                try:
                    ray.get(ref)
                    alive.append(actor)
                except RayError:
                    pass
        return alive

    def _broadcast(self, version: int, targets: list[Any], watch: Stopwatch) -> list[Any]:
        """One broadcast to ``targets`` (re-forming the group if they differ); returns the failed."""
        key = tuple(a._actor_id.hex() for a in targets)
        if key != self._members:
            try:
                self._form(targets)
            except (RayError, GetTimeoutError) as exc:
                logger.warning("forming the weight-update group failed (%s: %s)", type(exc).__name__,
                               str(exc).strip().splitlines()[-1:])
                self._members = None
                return targets
            self._members = key
            watch.lap("form")
        ranks = self.learner.policy_ranks if self._zero3 else self.learner.policy_ranks[:1]
        manifest = self._manifest_ref()
        sent = [a.broadcast_weights.remote(manifest) for a in ranks]
        received = [a.receive_weights.remote(manifest, version, self.timeout_s) for a in targets]
        deadline = self.timeout_s * (1 + self._buckets) + 60.0
        ok = bool(self.learner.collect("weight broadcast", sent, ranks, timeout=deadline)[0])
        failed = []
        for actor, ref in zip(targets, received, strict=True):
            try:
                self.last_bytes = int(ray.get(ref, timeout=deadline))
            except (RayError, GetTimeoutError):
                failed.append(actor)
        if not ok and not failed:  # the sender failed while every receiver got all: cannot be
            failed = list(targets)
        watch.lap("transfer")
        return failed

    @property
    def _zero3(self) -> bool:
        cfg = self.learner.cfg
        return cfg.engine == "deepspeed" and cfg.zero_stage == 3

    @property
    def _buckets(self) -> int:
        return len(ray.get(self._manifest_ref()).buckets)

    def _manifest_ref(self) -> Any:
        if self._manifest is None:  # shapes never change: planned once
            rank0 = self.learner.policy_ranks[0]
            plan = self.learner.collect("weight manifest", [rank0.weight_manifest.remote()], [rank0])[0]
            self._manifest = ray.put(plan)
        return self._manifest

    def _form(self, targets: list[Any]) -> None:
        """A new group: learner rank 0 and each target's engine workers, all joining at once."""
        started = time.perf_counter()
        counts = ray.get([a.weight_workers.remote() for a in targets], timeout=60.0)
        if any(c <= 0 for c in counts):
            raise RuntimeError("a rollout engine cannot receive a weight broadcast (hf engine?); "
                               "use rollout.weight_sync=object_store")
        world = 1 + sum(counts)
        addr, port, store = ray.get(_rendezvous.options(scheduling_strategy=self.learner._bundle(0)).remote())
        self._remove_store()
        self._store_dir = os.path.dirname(store) if store is not None else None
        refs = [self.learner.policy_ranks[0].join_weight_group.remote(world, addr, port, store, self.timeout_s)]
        offset = 1
        for actor, count in zip(targets, counts, strict=True):
            refs.append(actor.join_weight_group.remote(offset, world, addr, port, store, self.timeout_s))
            offset += count
        ray.get(refs, timeout=self.timeout_s + 60.0)
        logger.info("weight-update group formed: %d ranks (%d engines) in %.2fs", world, len(targets),
                    time.perf_counter() - started)

    def _remove_store(self) -> None:
        if self._store_dir is not None:
            shutil.rmtree(self._store_dir, ignore_errors=True)
            self._store_dir = None

    def close(self) -> None:
        """Drop learner rank 0's group and the rendezvous directory."""
        try:
            ray.get(self.learner.policy_ranks[0].leave_weight_group.remote(), timeout=30.0)
        except (RayError, GetTimeoutError):
            pass
        self._members = None
        self._remove_store()
