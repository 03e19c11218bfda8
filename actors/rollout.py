"""Rollout on Ray: N ``RolloutActor``s, each owning one generation engine, behind a group.

Runs in the driver (the group) and in rollout actor processes. The group hands out small
chunks of prompts to whichever actor is free (balanced by work left, not round-robin),
returns one ``TrajectoryBatch`` ObjectRef assembled next to the data (the driver never
holds the tensors), and survives an actor's death: Ray restarts the actor, the chunk it
lost is re-run, and the restarted actor loads the current weights before generating
(every call carries the wanted policy version and, on the object-store path, a reference
to its weights). With a weight broadcast attached (``use_broadcast``) new
weights come by one collective from learner rank 0, and an actor behind the group's
version (restarted, or failed a broadcast) is caught up by a broadcast of its own before
its next chunk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from workers.config import RolloutConfig
from workers.data.rows import QARow
from workers.faults import HANG_ENV, RestartBudget, hang_point
from workers.rollout.agent_loop import SearchFn
from workers.rollout.worker import ROLLOUT_SEARCHES, RolloutWorker, concat_trajectories
from workers.types import TrajectoryBatch

logger = logging.getLogger(__name__)

MAX_CHUNK_ATTEMPTS = 4
"""How often one chunk of prompts is tried before the rollout fails."""


class RolloutActor(RolloutWorker):
    """A ``RolloutWorker`` that catches up with the wanted policy version before generating."""

    def rollout_at(self, rows: Sequence[QARow], version: int, weights_box: list[Any],
                   greedy: bool = False, seed: int | None = None) -> tuple[dict[str, float], TrajectoryBatch]:
        """Roll out ``rows`` with the weights of ``version`` (``weights_box[0]``: their ObjectRef).

        Returns a small status (sample count and metrics) and the batch, as two objects, so
        the caller can check for failure without fetching the batch.
        """
        hang_point("rollout")
        if version != self.policy_version:
            if not weights_box or weights_box[0] is None:
                raise RuntimeError(f"rollout actor is at version {self.policy_version}, "
                                   f"wanted {version}, and no weights were given")
            self.update_weights(ray.get(weights_box[0]), version)
        batch = self.rollout(rows, greedy=greedy, seed=seed)
        return {"samples": float(len(batch)), **self.metrics()}, batch

    def pid(self) -> int:
        return os.getpid()

    def version(self) -> int:
        return self.policy_version


@ray.remote(num_cpus=0)
def _concat(*batches: TrajectoryBatch) -> TrajectoryBatch:
    return concat_trajectories(batches)


def _responsive(actors: list[Any], timeout: float = 5.0) -> list[Any]:
    """The actors that answer a ping within ``timeout`` (not dead, restarting or busy)."""
    refs = [a.pid.remote() for a in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    out = []
    for actor, ref in zip(actors, refs, strict=True):
        try:
            if ref in ready and ray.get(ref):
                out.append(actor)
        except RayActorError:
            pass
    return out


def _merge_statuses(statuses: list[dict[str, float]]) -> dict[str, float]:
    """Sum counts, sample-weighted mean of rates."""
    total = sum(s.get("samples", 0.0) for s in statuses) or 1.0
    merged: dict[str, float] = {}
    for key in {k for s in statuses for k in s} - {"samples"}:
        values = [(s.get(key, 0.0), s.get("samples", 0.0)) for s in statuses]
        if key == ROLLOUT_SEARCHES:
            merged[key] = sum(v for v, _ in values)
        else:
            merged[key] = sum(v * n for v, n in values) / total
    return merged


class RolloutGroup:
    """The rollout workers: ``num_workers`` actors, or one in-process worker when it is 0."""

    def __init__(self, cfg: RolloutConfig, model_path: str, search: SearchFn, *, topk: int = 3,
                 dtype: str = "auto", trust_remote_code: bool = False, chunk_size: int = 4,
                 placement: Sequence[Mapping[str, Any]] | None = None) -> None:
        """``placement``: per actor, the Ray options of its planned place (``num_cpus``,
        ``num_gpus``, ``scheduling_strategy``, and ``env`` for its engine; ``actors.placement``);
        None reserves ``rollout.num_cpus_per_worker`` / ``num_gpus_per_worker`` anywhere."""
        self.cfg = cfg
        self.chunk_size = chunk_size
        self.version = 0
        self._weights_ref: Any = None
        args = (cfg, model_path, search)
        kwargs = {"topk": topk, "dtype": dtype, "trust_remote_code": trust_remote_code}
        self._local: RolloutWorker | None = None
        self._last_metrics: dict[str, float] = {}
        self._broadcast: Any = None  # actors.weight_sync.BroadcastSync when attached
        self._stale: list[Any] = []
        self._killed: set[Any] = set()  # status refs of chunks whose actor was killed for a timeout
        self._down: list[Any] = []  # actors seen dead and not answering since (counted once)
        self.actors: list[Any] = []
        # Ray restarts a dead actor without limit; the group counts deaths within a window.
        self.restarts = RestartBudget(cfg.max_restarts, cfg.restart_window_s, "rollout actors",
                                      "rollout.max_restarts within rollout.restart_window_s")
        if cfg.num_workers == 0:
            self._local = RolloutWorker(*args, **kwargs)  # type: ignore[arg-type]
            return
        env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(cfg.kv_cache_gib))),
               "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
        for key in ("VLLM_HOST_IP", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", HANG_ENV):
            if key in os.environ:
                env[key] = os.environ[key]
        remote = ray.remote(RolloutActor)
        places: list[Mapping[str, Any]] = list(placement) if placement is not None else [
            {"num_cpus": cfg.num_cpus_per_worker, "num_gpus": cfg.num_gpus_per_worker}] * cfg.num_workers
        self.actors = []
        for place in places:
            options = {k: v for k, v in place.items() if k != "env"}
            engine_env: dict[str, str] = place.get("env") or {}
            runtime_env = {"env_vars": {**env, **engine_env}}
            self.actors.append(remote.options(max_restarts=-1, max_task_retries=0, runtime_env=runtime_env,
                                              **options).remote(*args, **kwargs))
        self.pids()  # engines loaded; construction errors surface here
        logger.info("%d rollout actors ready (%s engine)", len(self.actors), cfg.engine)

    def rollout(self, rows: Sequence[QARow], *, greedy: bool = False, seed: int | None = None) -> Any:
        """Trajectories of ``rows``: an ObjectRef of one ``TrajectoryBatch`` (in-process: the batch).

        A chunk lost to an actor's death, or to an actor killed for giving no answer within
        ``rollout.timeout_s``, is rolled out again (each chunk at most ``MAX_CHUNK_ATTEMPTS``
        times); deaths count against ``rollout.max_restarts`` within ``rollout.restart_window_s``.
        """
        if self._local is not None:
            return self._local.rollout(rows, greedy=greedy, seed=seed)
        chunks = [list(rows[i:i + self.chunk_size]) for i in range(0, len(rows), self.chunk_size)]
        results: list[Any] = [None] * len(chunks)
        attempts = [0] * len(chunks)
        todo = list(range(len(chunks)))
        running: dict[Any, tuple[int, Any, Any, float]] = {}  # status ref -> chunk, actor, batch, start
        statuses: list[dict[str, float]] = []
        idle = list(self.actors)
        benched: list[Any] = []  # restarting, or behind the version and not caught up yet
        self._find_stale()
        while todo or running:
            while todo and idle:
                actor = idle.pop(0)
                if not self._ready_for_chunk(actor):
                    benched.append(actor)
                    continue
                i = todo.pop(0)
                attempts[i] += 1
                chunk_seed = None if seed is None else seed + i
                status, batch = actor.rollout_at.options(num_returns=2).remote(
                    chunks[i], self.version, [self._weights_ref], greedy, chunk_seed)
                running[status] = (i, actor, batch, time.monotonic())
            if not running:  # every actor is behind: wait for a restart, then catch up
                if not benched:
                    raise RuntimeError("no rollout actor can take a chunk")
                time.sleep(2.0)
                idle, benched = benched, []
                continue
            done = self._wait_one(running)
            if done is None:
                continue  # the overdue actors were killed: their chunks fail and are re-run
            i, actor, batch, _ = running.pop(done)
            self._killed.discard(done)
            try:
                statuses.append(ray.get(done))  # raises if the actor died
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                if attempts[i] >= MAX_CHUNK_ATTEMPTS:
                    raise RuntimeError(f"rollout chunk {i} failed {attempts[i]} times") from exc
                logger.warning("rollout: actor %d lost chunk %d (%s); re-running it",
                               self._index(actor), i, type(exc).__name__)
                self._mark_down(actor)
                todo.insert(0, i)
                if self._broadcast is not None:
                    self._stale.append(actor)
            else:
                results[i] = batch
            idle.append(actor)
        self._last_metrics = _merge_statuses(statuses)
        return _concat.remote(*results)

    def _wait_one(self, running: dict[Any, tuple[int, Any, Any, float]]) -> Any:
        """The next finished chunk's status ref; None after killing the actors whose chunk has
        run longer than ``rollout.timeout_s`` (Ray restarts them; their chunks then fail)."""
        starts = [start for ref, (_, _, _, start) in running.items() if ref not in self._killed]
        timeout = None if not starts else max(0.0, min(starts) + self.cfg.timeout_s - time.monotonic())
        done, _ = ray.wait(list(running), num_returns=1, timeout=timeout)
        if done:
            return done[0]
        now = time.monotonic()
        for ref, (i, actor, _, start) in running.items():
            if ref not in self._killed and now - start >= self.cfg.timeout_s:
                logger.warning("rollout: actor %d gave no answer for chunk %d within rollout.timeout_s=%g s; "
                               "killing it (Ray restarts it) to roll the chunk out again",
                               self._index(actor), i, self.cfg.timeout_s)
                ray.kill(actor, no_restart=False)
                self._mark_down(actor)
                self._killed.add(ref)  # its call fails once the kill lands: not killed twice
        return None

    def _mark_down(self, actor: Any) -> None:
        """Note an actor's death (once until it answers again) against the restart budget."""
        if not any(actor is a for a in self._down):
            self._down.append(actor)
            self.restarts.record(f"rollout actor {self._index(actor)}")

    def _ready_for_chunk(self, actor: Any) -> bool:
        """Caught up with the group's version and, if it died, answering again (a call sent
        to an actor Ray is still restarting can fail at once)."""
        if any(actor is a for a in self._down):
            if not _responsive([actor], timeout=2.0):
                return False
            self._down = [a for a in self._down if a is not actor]
        return self._caught_up(actor)

    def _index(self, actor: Any) -> int:
        return next((k for k, a in enumerate(self.actors) if a is actor), -1)

    def set_weights(self, weights_ref: Any, version: int) -> None:
        """Push new policy weights (an ObjectRef of the state dict) to every worker.

        An actor that dies during the sync, or gives no answer within
        ``rollout.weight_sync_timeout_s`` (it is then killed), does not stop the step: once
        restarted it loads these weights before its next chunk."""
        self._weights_ref, self.version = weights_ref, version
        if self._local is not None:
            self._local.update_weights(ray.get(weights_ref) if isinstance(weights_ref, ray.ObjectRef)
                                       else weights_ref, version)
            return
        actors = _responsive(self.actors)  # a restarting actor catches up at its next chunk
        refs = [a.update_weights.remote(weights_ref, version) for a in actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.cfg.weight_sync_timeout_s)
        for actor, ref in zip(actors, refs, strict=True):
            k = self._index(actor)
            if ref not in ready:
                logger.warning("weight sync: rollout actor %d gave no answer within rollout.weight_sync_timeout_s="
                               "%g s; killing it (it loads version %d before its next chunk)", k,
                               self.cfg.weight_sync_timeout_s, version)
                ray.kill(actor, no_restart=False)
                self._mark_down(actor)
                continue
            try:
                ray.get(ref)
            except RayActorError as exc:
                if exc.actor_id not in (None, actor._actor_id.hex()):
                    raise  # not this actor: the weights' producer (the learner) failed
                logger.warning("weight sync: rollout actor %d died (%s); it loads version %d before its "
                               "next chunk", k, type(exc).__name__, version)
                self._mark_down(actor)

    @property
    def broadcasting(self) -> bool:
        """True when new weights come by broadcast (``use_broadcast``)."""
        return self._broadcast is not None

    def use_broadcast(self, sync: Any) -> bool:
        """Take new weights by broadcast through ``sync`` (``actors.weight_sync.BroadcastSync``).

        Only vLLM engines in actors can join the group; otherwise (hf engine, in-process
        worker) the object-store path stays and this returns False."""
        if self._broadcast is not None:
            self._broadcast.close()
            self._broadcast = None
        if not self.actors or self.cfg.engine != "vllm":
            logger.info("weight broadcast needs vLLM rollout actors: using the object store")
            return False
        self._broadcast = sync
        return True

    def sync_broadcast(self, version: int) -> None:
        """Bring every actor to ``version`` by one broadcast from learner rank 0; actors that
        miss it (dead, restarting) catch up before their next chunk."""
        assert self._broadcast is not None, "sync_broadcast without use_broadcast"
        self._weights_ref, self.version = None, version
        self._stale = self._broadcast.sync(version, self.actors)
        if self._stale:
            logger.warning("%d rollout actors missed the weight broadcast of version %d; they "
                           "catch up before their next chunk", len(self._stale), version)

    def _find_stale(self) -> None:
        """Broadcast mode: note actors whose version is not the group's (restarted since)."""
        if self._broadcast is None:
            return
        refs = [a.version.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=5.0)
        for actor, ref in zip(self.actors, refs, strict=True):
            try:
                behind = ref not in ready or ray.get(ref) != self.version
            except RayActorError:
                behind = True
            if behind and not any(actor is a for a in self._stale):
                self._stale.append(actor)

    def _caught_up(self, actor: Any) -> bool:
        """Broadcast mode: a stale actor gets the current weights by a broadcast of its own."""
        if not any(actor is a for a in self._stale):
            return True
        assert self._broadcast is not None
        if self._broadcast.sync(self.version, [actor]):
            return False
        self._stale = [a for a in self._stale if a is not actor]
        logger.info("a rollout actor caught up with version %d", self.version)
        return True

    def sleep(self) -> None:
        """Every engine frees its GPU memory for the learner phase (``rollout.sleep_level`` > 0
        on GPUs; a no-op on CPU). Engines wake by themselves before generating or loading weights."""
        if self._local is not None:
            self._local.sleep()
        elif self.cfg.sleep_level and self.actors:
            ray.get([a.sleep.remote() for a in _responsive(self.actors)], timeout=self.cfg.weight_sync_timeout_s)

    def metrics(self) -> dict[str, float]:
        """Metrics of the last ``rollout`` call (rates averaged over chunks, counts summed)."""
        if self._local is not None:
            return self._local.metrics()
        return dict(self._last_metrics)

    def check_retrieval(self, timeout: float) -> list[float]:
        """Every worker searches once through its own retrieval route before any rollout, so a
        worker that cannot reach retrieval (an unreachable ``retrieval.url`` from its node, a
        replica that does not answer) stops the job at start with its index; seconds per worker."""
        if self._local is not None:
            return [self._local.check_retrieval()]
        refs = [a.check_retrieval.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        seconds: list[float] = []
        for i, ref in enumerate(refs):
            if ref not in ready:
                raise RuntimeError(f"rollout actor {i} got no answer from retrieval within {timeout:g} s "
                                   "(retrieval.search_timeout_s / retrieval.http_timeout_s)")
            try:
                seconds.append(float(ray.get(ref)))
            except Exception as exc:
                cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the worker's exception
                raise RuntimeError(f"rollout actor {i} cannot reach retrieval: "
                                   f"{type(cause).__name__}: {cause}") from exc
        return seconds

    def pids(self, timeout: float = 300.0) -> list[int]:
        """Process ids of the actors, waiting for any that Ray is restarting."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return ray.get([a.pid.remote() for a in self.actors])
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def shutdown(self) -> None:
        """Close the engines (their worker processes exit cleanly), then stop the actors."""
        if self._local is not None:
            self._local.close()
        if self._broadcast is not None:
            self._broadcast.close()
            self._broadcast = None
        if not self.actors:  # in-process (Ray may not even be running) or already stopped
            return
        try:
            ray.get([a.close.remote() for a in self.actors], timeout=60)
        except Exception as exc:  # a dead or stuck actor: killing it below is all that is left
            logger.warning("rollout actors did not close cleanly (%s); killing them", type(exc).__name__)
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
