"""LearnerGroup: W data-parallel learner ranks as Ray actors in one placement group.

Runs in the driver; the ranks are ``workers.learner.LearnerWorker`` instances wrapped with
``ray.remote`` (this module adds resources, placement, rendezvous and forwarding only).
Rank 0 is the rendezvous of the ranks' process group (gloo on CPU, NCCL on GPUs).
The driver passes ObjectRefs: each rank pulls the ``TrajectoryBatch`` from the object
store and works on its index range; the advantages of the whole batch are computed by
one Ray task next to the data (whitening needs the whole batch) and shared by reference.

By default (``colocate_critic``) each rank holds policy, reference and critic in one
process, which on CPU is the only sensible layout (everything shares the cores) and on
GPUs puts the three models on the same devices. Otherwise the critic gets its own W ranks.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from workers.config import LearnerConfig
from workers.faults import HANG_ENV
from workers.learner.data import PPOBatch, build_ppo_batch
from workers.learner.worker import LearnerWorker
from workers.sharding import rank_range
from workers.types import RewardBatch, TrajectoryBatch

logger = logging.getLogger(__name__)


class LearnerFailure(RuntimeError):
    """A learner rank died, failed or hung: the step cannot finish; resume from the last checkpoint."""


def _free_port() -> tuple[str, int]:
    addr = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1" if addr == "127.0.0.1" else "", 0))
        return addr, int(s.getsockname()[1])


@ray.remote(num_cpus=0)
def _rendezvous() -> tuple[str, int, str | None]:
    """Address of the node hosting rank 0, a free port there, and on a loopback cluster (all
    ranks on this machine) a fresh file to meet through, so no rendezvous server listens."""
    addr, port = _free_port()
    if addr != "127.0.0.1":
        return addr, port, None
    return addr, port, os.path.join(tempfile.mkdtemp(prefix="stepsearch-rdzv-"), "store")


@ray.remote(num_cpus=0, num_returns=2)
def _build_targets(traj: TrajectoryBatch, rewards: RewardBatch, cfg: LearnerConfig,
                   group_size: int, n_policy: int, values_only: bool, *parts: dict[str, np.ndarray]
                   ) -> tuple[PPOBatch, dict[str, float]]:
    """Concatenate the ranks' shards (in rank order) and compute the batch's targets.

    ``values_only``: the parts hold values alone (critic warmup). The policy is then still
    the reference, so the KL term is zero and is left out; the log-probs are zeros that a
    critic-only update does not read."""
    policy_parts, critic_parts = parts[:n_policy], parts[n_policy:] or parts[:n_policy]

    def cat(key: str, ps: tuple[dict[str, np.ndarray], ...]) -> np.ndarray | None:
        return np.concatenate([p[key] for p in ps]) if all(key in p for p in ps) else None

    old = np.zeros(traj.action_mask.shape, np.float32) if values_only else cat("old_logprobs", policy_parts)
    assert old is not None
    targets = build_ppo_batch(traj, rewards, cfg, old, cat("ref_logprobs", policy_parts),
                              cat("values", critic_parts), group_size)
    return targets, targets.stats


class LearnerGroup:
    """The learner's ranks: build, rendezvous, compute, update, export, checkpoint."""

    def __init__(self, cfg: LearnerConfig, model_path: str, *, seed: int = 0,
                 total_steps: int = 0, group_size: int = 1, temperature: float = 1.0,
                 trust_remote_code: bool = False, placement: Sequence[Sequence[Mapping[str, Any]]] | None = None
                 ) -> None:
        """``placement``: per set of ranks (policy, then critic when it has ranks of its own), per
        rank, the Ray options of its planned bundle (``actors.placement``); None: a placement
        group of this group's own with a ``{CPU, GPU}`` bundle per rank."""
        self.cfg, self.group_size = cfg, group_size
        self.trust_remote_code = trust_remote_code
        W = cfg.num_ranks
        needs_critic = cfg.advantage_estimator == "gae"
        if cfg.colocate_critic or not needs_critic:
            roles: list[tuple[str, ...]] = [("policy", "critic") if needs_critic else ("policy",)]
        else:
            roles = [("policy",), ("critic",)]
        self.pg: PlacementGroup | None = None
        if placement is None:
            bundle = {"CPU": cfg.num_cpus_per_rank, "GPU": cfg.num_gpus_per_rank}
            self.pg = placement_group([dict(bundle) for _ in range(W * len(roles))], strategy="PACK")
            ray.get(self.pg.ready())
            placement = [[{"num_cpus": cfg.num_cpus_per_rank, "num_gpus": cfg.num_gpus_per_rank,
                           "scheduling_strategy": self._bundle(i * W + r)} for r in range(W)]
                         for i in range(len(roles))]
        if len(placement) != len(roles) or any(len(p) != W for p in placement):
            raise ValueError(f"learner placement has {[len(p) for p in placement]} ranks per set, "
                             f"wanted {len(roles)} set(s) of {W}")
        self.sets: list[list[Any]] = [
            self._spawn(r, model_path, seed, total_steps, temperature, placement[i])
            for i, r in enumerate(roles)]
        self._rendezvous_dirs: list[str] = []
        self.policy_ranks = self.sets[0]
        self.critic_ranks = self.sets[1] if len(self.sets) > 1 else []
        for i, ranks in enumerate(self.sets):
            addr, port, store = ray.get(_rendezvous.options(
                scheduling_strategy=placement[i][0]["scheduling_strategy"]).remote())
            if store is not None:  # on this machine (loopback cluster): removed at shutdown
                self._rendezvous_dirs.append(os.path.dirname(store))
            ray.get([a.init_distributed.remote(r, W, addr, port, store) for r, a in enumerate(ranks)])
        logger.info("learner group ready: %d ranks x %s", W, roles)

    def _bundle(self, index: int) -> PlacementGroupSchedulingStrategy:
        assert self.pg is not None
        return PlacementGroupSchedulingStrategy(placement_group=self.pg,
                                                placement_group_bundle_index=index)

    def _spawn(self, roles: tuple[str, ...], model_path: str, seed: int, total_steps: int,
               temperature: float, places: Sequence[Mapping[str, Any]]) -> list[Any]:
        cls = ray.remote(LearnerWorker)
        env = {"env_vars": {HANG_ENV: os.environ[HANG_ENV]}} if HANG_ENV in os.environ else None
        return [cls.options(runtime_env=env, **place).remote(
                    self.cfg, model_path, roles, seed, total_steps, temperature, self.trust_remote_code)
                for place in places]

    @property
    def all_ranks(self) -> list[Any]:
        return [a for ranks in self.sets for a in ranks]

    def _rank_name(self, actor: Any) -> str:
        for ranks, role in ((self.policy_ranks, "policy"), (self.critic_ranks, "critic")):
            for r, a in enumerate(ranks):
                if a is actor:
                    return f"{role} rank {r}"
        return "a learner rank"

    def collect(self, phase: str, refs: list[Any], actors: list[Any], fetch: bool = True,
             timeout: float | None = None) -> Any:
        """``ray.get(refs)`` (``fetch=False``: wait only) within ``timeout`` (default
        ``learner.timeout_s``); a rank that fails or gives no answer raises ``LearnerFailure``
        naming the phase and the rank."""
        timeout = self.cfg.timeout_s if timeout is None else timeout
        try:
            if fetch:
                return ray.get(refs, timeout=timeout)
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)
            if len(ready) < len(refs):
                raise GetTimeoutError(f"{len(refs) - len(ready)} of {len(refs)} not ready")
            return None
        except GetTimeoutError as exc:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            hung = [self._rank_name(a) for a, ref in zip(actors, refs, strict=False) if ref not in ready]
            raise LearnerFailure(f"learner {phase}: {', '.join(hung) or 'a learner task'} gave no answer "
                                 f"within {timeout:g} s (learner.timeout_s={self.cfg.timeout_s:g})") from exc
        except RayError as exc:
            who = self._failed_rank(exc, refs, actors)
            cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the rank's exception
            text = str(cause).strip().splitlines()
            raise LearnerFailure(f"learner {phase}: {who} failed ({type(cause).__name__}: "
                                 f"{text[0] if text else ''})") from exc

    def _failed_rank(self, exc: RayError, refs: list[Any], actors: list[Any]) -> str:
        """The rank whose call raised ``exc`` (a dead actor names itself; else the first failed call)."""
        for actor in actors:
            if getattr(exc, "actor_id", None) == actor._actor_id.hex():
                return self._rank_name(actor)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        for actor, ref in zip(actors, refs, strict=False):
            if ref in ready:
                try:
                    ray.get(ref)
                except RayError:
                    return self._rank_name(actor)
        return "a learner rank"

    def forward(self, traj_ref: Any, batch_size: int | None = None, values_only: bool = False) -> list[Any]:
        """Start the log-prob, reference log-prob and value passes on every rank's shard and
        return their ObjectRefs at once: they need the trajectories only, so they run while
        the rewards are scored. ``values_only`` (critic warmup) runs the critic's
        passes alone, on the ranks that hold it."""
        if batch_size is None:
            batch_size = len(ray.get(traj_ref))
        W = self.cfg.num_ranks
        sets = [self.critic_ranks or self.policy_ranks] if values_only else self.sets
        return [a.compute.remote(traj_ref, *rank_range(batch_size, r, W), values_only)
                for ranks in sets for r, a in enumerate(ranks)]

    def prepare(self, traj_ref: Any, reward_ref: Any, batch_size: int | None = None,
                values_only: bool = False, parts: list[Any] | None = None) -> tuple[Any, dict[str, float]]:
        """The forward passes (``parts`` from ``forward``, else started now), then the targets.

        Returns the ``PPOBatch`` ObjectRef and the batch-level metrics.
        """
        if parts is None:
            parts = self.forward(traj_ref, batch_size, values_only)
        sets = [self.critic_ranks or self.policy_ranks] if values_only else self.sets
        self.collect("forward passes", parts, [a for ranks in sets for a in ranks], fetch=False)
        W = self.cfg.num_ranks
        targets_ref, stats_ref = _build_targets.remote(traj_ref, reward_ref, self.cfg,
                                                       self.group_size, W, values_only, *parts)
        return targets_ref, self.collect("advantages", [stats_ref], [])[0]

    def update(self, traj_ref: Any, reward_ref: Any, batch_size: int | None = None,
               update_policy: bool = True, parts: list[Any] | None = None) -> dict[str, float]:
        """One StePPO update on a rollout batch; returns its metrics (``ppo/...`` keys).

        ``update_policy=False`` trains the critic alone (critic warmup); ``parts``: the
        batch's forward passes already started by ``forward``."""
        targets_ref, stats = self.prepare(traj_ref, reward_ref, batch_size, values_only=not update_policy,
                                          parts=parts)
        results = self.collect("update", [a.ppo_update.remote(traj_ref, targets_ref, update_policy)
                                       for a in self.all_ranks], self.all_ranks)
        metrics = dict(stats)
        for ranks_metrics in results[::self.cfg.num_ranks]:  # rank 0 of each set
            metrics.update(ranks_metrics)
        return metrics

    def sft_update(self, traj_ref: Any) -> dict[str, float]:
        """One supervised pass over a batch of gold trajectories (every rank takes its share)."""
        results = self.collect("sft update", [a.sft_update.remote(traj_ref) for a in self.policy_ranks],
                            self.policy_ranks)
        return results[0]

    def export_weights(self) -> dict[str, Any]:
        """Full policy state dict in Hugging Face names (every rank takes part under ZeRO-3)."""
        refs = [a.export_weights.remote() for a in self.policy_ranks]
        return self.collect("weight export", refs, self.policy_ranks)[0]

    def export_weights_ref(self) -> Any:
        """ObjectRef of the full policy state dict, for the rollout workers (the driver never fetches it)."""
        refs = [a.export_weights.remote() for a in self.policy_ranks]
        self.collect("weight export", refs, self.policy_ranks, fetch=False)
        # A dead rank's result counts as ready too: ask the ranks themselves. (An exception in
        # the export surfaces where the engines load the weights, as a learner failure.)
        self.collect("weight export", [a.__ray_ready__.remote() for a in self.policy_ranks], self.policy_ranks)
        return refs[0]

    def save_checkpoint(self, directory: str) -> None:
        """All ranks write their engine state; rank 0 adds the Hugging Face export."""
        self.collect("checkpoint", [a.save_checkpoint.remote(directory) for a in self.all_ranks], self.all_ranks)

    def load_checkpoint(self, directory: str) -> None:
        """Restore a checkpoint written by a group of the same shape."""
        self.collect("checkpoint load", [a.load_checkpoint.remote(directory) for a in self.all_ranks],
                  self.all_ranks)

    def parameters(self, rank: int = 0, role: str = "policy") -> np.ndarray:
        """One rank's flattened parameters (tests compare ranks; ZeRO-3 gathers on all)."""
        ranks = self.critic_ranks if role == "critic" and self.critic_ranks else self.policy_ranks
        refs = [a.parameters_vector.remote(role) for a in ranks]
        return ray.get(refs)[rank]

    def shutdown(self) -> None:
        """Stop the ranks and release their placement group."""
        for actor in self.all_ranks:
            ray.kill(actor)
        if self.pg is not None:  # a placement from the job's plan is released by its owner
            remove_placement_group(self.pg)
        for directory in self._rendezvous_dirs:
            shutil.rmtree(directory, ignore_errors=True)
