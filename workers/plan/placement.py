"""Where each actor of a job goes: nodes, placement groups, bundles, GPU and CPU shares.

Runs in the driver (``launch.train``, before any actor starts) and in ``launch.plan``;
no Ray. ``cluster.placement=colocated`` follows StepSearch's release and OpenRLHF's
colocate mode: one placement group with a ``{GPU: 1, CPU: k}`` bundle per GPU; a vLLM
engine with tensor parallel t spans t consecutive bundles of one node; the learner ranks
(policy with its reference, and the critic) take fractions of the same bundles.
``separate`` gives every role resources of its own, as the actors reserved them before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from workers.config import Config
from workers.plan.shapes import ClusterShape

EPS = 1e-9


@dataclass(frozen=True)
class Bundle:
    """One bundle of a placement group."""

    node: int
    """Index of the node in ``ClusterShape.nodes``."""
    gpus: float
    """GPUs reserved by the bundle."""
    cpus: float
    """CPUs reserved by the bundle."""


@dataclass(frozen=True)
class PlacementGroupPlan:
    """A placement group the job creates."""

    name: str
    """shared (colocated) or learner (separate)."""
    bundles: tuple[Bundle, ...]
    """Bundles in index order."""


@dataclass(frozen=True)
class ActorPlan:
    """One actor (a vLLM engine counts once, its tensor-parallel workers are its bundles)."""

    group: str
    """rollout, learner, critic, retrieval or reward."""
    index: int
    """Index inside its group."""
    node: int
    """Node index (of the actor's first bundle)."""
    placement_group: Optional[str]
    """Name of its placement group; None when scheduled on the node directly."""
    bundles: tuple[int, ...]
    """Bundle indices it uses (an engine with tensor parallel t: t of them)."""
    gpus_per_bundle: float
    """GPUs it (or each of its tensor-parallel workers) takes per bundle, or on its node."""
    cpus: float
    """CPUs the actor reserves (in its first bundle, or on its node)."""


@dataclass(frozen=True)
class Placement:
    """Every actor's place, or the first reason the cluster cannot hold the job."""

    mode: str
    """colocated or separate (cluster.placement)."""
    groups: tuple[PlacementGroupPlan, ...]
    actors: tuple[ActorPlan, ...]
    problem: Optional[tuple[str, str]] = None
    """(setting to change, reason) when the job does not fit; None when it does."""

    def of(self, group: str) -> list[ActorPlan]:
        """The actors of one group, in index order."""
        return [a for a in self.actors if a.group == group]


class _Unplaceable(Exception):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(reason)
        self.field_name, self.reason = field_name, reason


class _Free:
    """Resources left on each node while actors are placed in order."""

    def __init__(self, shape: ClusterShape) -> None:
        self.gpus = [n.gpus for n in shape.nodes]
        self.cpus = [n.cpus for n in shape.nodes]

    def fits(self, node: int, gpus: float, cpus: float) -> bool:
        return self.gpus[node] + EPS >= gpus and self.cpus[node] + EPS >= cpus

    def take(self, node: int, gpus: float, cpus: float) -> int:
        self.gpus[node] -= gpus
        self.cpus[node] -= cpus
        return node

    def first_fit(self, gpus: float, cpus: float, what: str, field_name: str) -> int:
        for node in range(len(self.gpus)):
            if self.fits(node, gpus, cpus):
                return self.take(node, gpus, cpus)
        left = ", ".join(f"node {i}: {g:g} GPU {c:g} CPU"
                         for i, (g, c) in enumerate(zip(self.gpus, self.cpus, strict=True)))
        raise _Unplaceable(field_name, f"{what} needs {gpus:g} GPU and {cpus:g} CPU on one node, but only "
                                       f"{left or 'no nodes'} are left: lower {field_name} or add nodes (plan.nodes)")


def learner_sets(cfg: Config) -> int:
    """Processes per learner rank index: 1 (critic inside the policy's rank, or no critic) or 2."""
    needs_critic = cfg.learner.advantage_estimator == "gae"
    return 2 if needs_critic and not cfg.learner.colocate_critic else 1


def total_demand(cfg: Config, shape: ClusterShape) -> dict[str, float]:
    """GPUs and CPUs the job reserves in ``cfg.cluster.placement`` (before packing into nodes)."""
    r, ro, ln = cfg.retrieval, cfg.rollout, cfg.learner
    sets = learner_sets(cfg)
    replicas = _retrieval_count(cfg, shape)
    cpus = replicas * r.num_cpus + cfg.reward.num_workers * 1.0
    gpus = replicas * r.num_gpus
    if cfg.cluster.placement == "colocated":
        return {"GPU": gpus + _shared_bundle_count(cfg),
                "CPU": cpus + _shared_bundle_count(cfg) * _bundle_cpus(cfg)}
    return {"GPU": gpus + ro.num_workers * ro.num_gpus_per_worker + sets * ln.num_ranks * ln.num_gpus_per_rank,
            "CPU": cpus + ro.num_workers * ro.num_cpus_per_worker + sets * ln.num_ranks * ln.num_cpus_per_rank}


def _retrieval_count(cfg: Config, shape: ClusterShape) -> int:
    if cfg.retrieval.backend == "http":
        return 0
    return len(shape.nodes) if cfg.retrieval.replicas == "per_node" else cfg.retrieval.num_replicas


def _shared_bundle_count(cfg: Config) -> int:
    return max(cfg.learner.num_ranks, cfg.rollout.num_workers * cfg.rollout.tensor_parallel_size)


def _bundle_cpus(cfg: Config) -> float:
    """k of the ``{GPU: 1, CPU: k}`` bundles: the most CPUs any one bundle's actors reserve."""
    learner = learner_sets(cfg) * cfg.learner.num_cpus_per_rank
    engine = cfg.rollout.num_cpus_per_worker if cfg.rollout.num_workers else 0.0
    both = cfg.rollout.num_workers > 0 and cfg.learner.num_ranks > 0
    return learner + engine if both else max(learner, engine)


def gpu_share(cfg: Config) -> float:
    """Colocated: the fraction of each bundle's GPU that each role (engine, learner, critic) reserves."""
    roles = (1 if cfg.rollout.num_workers else 0) + learner_sets(cfg)
    return 1.0 / roles


def _demand_parts(cfg: Config, shape: ClusterShape) -> str:
    r, ro, ln = cfg.retrieval, cfg.rollout, cfg.learner
    services = (f"retrieval {_retrieval_count(cfg, shape)} x ({r.num_gpus:g} GPU, {r.num_cpus:g} CPU), "
                f"reward {cfg.reward.num_workers} x 1 CPU")
    if cfg.cluster.placement == "colocated":
        return f"{_shared_bundle_count(cfg)} bundles of {{GPU: 1, CPU: {_bundle_cpus(cfg):g}}}, {services}"
    return (f"learner {ln.num_ranks} x {learner_sets(cfg)} x ({ln.num_gpus_per_rank:g} GPU, "
            f"{ln.num_cpus_per_rank:g} CPU), rollout {ro.num_workers} x ({ro.num_gpus_per_worker:g} GPU, "
            f"{ro.num_cpus_per_worker:g} CPU), {services}")


def _demand_reason(cfg: Config, shape: ClusterShape) -> Optional[tuple[str, str]]:
    need = total_demand(cfg, shape)
    have = {"GPU": shape.gpus, "CPU": sum(n.cpus for n in shape.nodes)}
    ro, ln = cfg.rollout, cfg.learner
    for kind in ("GPU", "CPU"):
        if need[kind] > have[kind] + EPS:
            if cfg.cluster.placement == "colocated":
                field_name = "learner.num_cpus_per_rank" if kind == "CPU" else (
                    "retrieval.num_gpus" if _shared_bundle_count(cfg) <= have["GPU"] + EPS
                    else "learner.num_ranks" if ln.num_ranks >= ro.num_workers * ro.tensor_parallel_size
                    else "rollout.num_workers")
            else:
                field_name = "rollout.num_workers" if kind == "CPU" else "rollout.num_gpus_per_worker"
            return field_name, (f"the job needs {need[kind]:g} {kind} ({cfg.cluster.placement} placement: "
                                f"{_demand_parts(cfg, shape)}) but the cluster has {have[kind]:g}; lower "
                                f"{field_name} (or the other counts) or add nodes (plan.nodes)")
    return None


def _colocated(cfg: Config, shape: ClusterShape, free: _Free) -> tuple[list[PlacementGroupPlan], list[ActorPlan]]:
    count, k, share = _shared_bundle_count(cfg), _bundle_cpus(cfg), gpu_share(cfg)
    nodes: list[int] = []
    for node in range(len(shape.nodes)):
        while len(nodes) < count and free.fits(node, 1.0, k):
            nodes.append(free.take(node, 1.0, k))
    if len(nodes) < count:
        raise _Unplaceable("learner.num_cpus_per_rank", f"{count} bundles of {{GPU: 1, CPU: {k:g}}} do not fit the "
                           f"nodes' GPUs and CPUs: lower learner.num_cpus_per_rank or rollout.num_cpus_per_worker")
    group = PlacementGroupPlan("shared", tuple(Bundle(n, 1.0, k) for n in nodes))
    actors: list[ActorPlan] = []
    t = cfg.rollout.tensor_parallel_size
    for e in range(cfg.rollout.num_workers):
        span = tuple(range(e * t, e * t + t))
        if len({nodes[b] for b in span}) > 1:
            raise _Unplaceable("rollout.tensor_parallel_size", f"engine {e} with tensor_parallel_size={t} would span "
                               f"nodes (bundles {span[0]}-{span[-1]}): tensor parallelism stays inside one node; use "
                               f"a size that divides the GPUs per node")
        actors.append(ActorPlan("rollout", e, nodes[span[0]], "shared", span, share, cfg.rollout.num_cpus_per_worker))
    roles = ["learner"] + (["critic"] if learner_sets(cfg) == 2 else [])
    for role in roles:
        for r in range(cfg.learner.num_ranks):
            actors.append(ActorPlan(role, r, nodes[r], "shared", (r,), share, cfg.learner.num_cpus_per_rank))
    return [group], actors


def _separate(cfg: Config, free: _Free) -> tuple[list[PlacementGroupPlan], list[ActorPlan]]:
    ln, ro = cfg.learner, cfg.rollout
    roles = ["learner"] + (["critic"] if learner_sets(cfg) == 2 else [])
    bundles: list[Bundle] = []
    actors: list[ActorPlan] = []
    for role in roles:
        for r in range(ln.num_ranks):
            node = free.first_fit(ln.num_gpus_per_rank, ln.num_cpus_per_rank, f"{role} rank {r}", "learner.num_ranks")
            actors.append(ActorPlan(role, r, node, "learner", (len(bundles),), ln.num_gpus_per_rank,
                                    ln.num_cpus_per_rank))
            bundles.append(Bundle(node, ln.num_gpus_per_rank, ln.num_cpus_per_rank))
    for e in range(ro.num_workers):
        node = free.first_fit(ro.num_gpus_per_worker, ro.num_cpus_per_worker, f"rollout worker {e}",
                              "rollout.num_workers")
        actors.append(ActorPlan("rollout", e, node, None, (), ro.num_gpus_per_worker, ro.num_cpus_per_worker))
    return [PlacementGroupPlan("learner", tuple(bundles))], actors


def _services(cfg: Config, shape: ClusterShape, free: _Free) -> list[ActorPlan]:
    """Retrieval replicas (one per node, or first fit) and reward actors, outside placement groups."""
    r = cfg.retrieval
    actors = []
    for i in range(_retrieval_count(cfg, shape)):
        if r.replicas == "per_node":
            if not free.fits(i, r.num_gpus, r.num_cpus):
                short = "retrieval.num_gpus" if free.gpus[i] + EPS < r.num_gpus else "retrieval.num_cpus"
                raise _Unplaceable(short, f"node {i} has {free.gpus[i]:g} GPU {free.cpus[i]:g} CPU left for its "
                                   f"retrieval replica, which needs {r.num_gpus:g} GPU {r.num_cpus:g} CPU: lower "
                                   f"{short}, or the other roles' share of the node")
            node = free.take(i, r.num_gpus, r.num_cpus)
        else:
            node = free.first_fit(r.num_gpus, r.num_cpus, f"retrieval replica {i}", "retrieval.num_replicas")
        actors.append(ActorPlan("retrieval", i, node, None, (), r.num_gpus, r.num_cpus))
    for i in range(cfg.reward.num_workers):
        node = free.first_fit(0.0, 1.0, f"reward actor {i}", "reward.num_workers")
        actors.append(ActorPlan("reward", i, node, None, (), 0.0, 1.0))
    return actors


def place(cfg: Config, shape: ClusterShape) -> Placement:
    """Every actor's node and bundle in ``shape``, or the setting to change when they do not fit."""
    mode = cfg.cluster.placement
    problem = _demand_reason(cfg, shape)
    if problem is not None:
        return Placement(mode, (), (), problem)
    free = _Free(shape)
    try:
        groups, actors = _colocated(cfg, shape, free) if mode == "colocated" else _separate(cfg, free)
        actors += _services(cfg, shape, free)
    except _Unplaceable as exc:
        return Placement(mode, (), (), (exc.field_name, exc.reason))
    return Placement(mode, tuple(groups), tuple(actors))
