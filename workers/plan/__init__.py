"""The resource plan of a job: where each actor goes and whether each GPU's memory holds it.

Runs in the driver before any actor starts (``launch.train`` calls ``check_plan``) and in
``python -m launch.plan``. Ray-free: the cluster comes in as a ``ClusterShape`` (from
``plan.*`` arguments or ``ray.nodes()``). The formulas are in docs/cluster.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from workers.config import Config, ConfigError
from workers.plan.memory import USABLE_FRACTION, MemoryPlan, estimate
from workers.plan.placement import ActorPlan, Placement, gpu_share, place, total_demand
from workers.plan.shapes import ClusterShape, ModelShape, NodeShape, model_shape

__all__ = ["ActorPlan", "ClusterShape", "MemoryPlan", "ModelShape", "NodeShape", "Placement", "Plan",
           "check_plan", "format_plan", "make_plan"]


@dataclass(frozen=True)
class Plan:
    """A placement, its memory estimate and the verdict."""

    placement: Placement
    memory: Optional[MemoryPlan]
    """None when the job uses no GPU or the GPU memory is unknown."""
    shape: ClusterShape
    gpus: float
    """GPUs the job reserves."""
    field_name: str = ""
    """The setting to change when it does not fit."""
    reason: str = ""
    """Why it does not fit ('' when it does)."""

    @property
    def fits(self) -> bool:
        """True when every actor has a place and every GPU's memory holds its phases."""
        return not self.reason

    def summary(self) -> dict[str, Any]:
        """The JSON object of ``launch.plan``'s last line."""
        used = {a.node for a in self.placement.actors}
        peak = round(self.memory.peak_gib, 1) if self.memory else 0.0
        return {"fits": self.fits, "nodes": len(used) or len(self.shape.nodes), "gpus": round(self.gpus, 3),
                "peak_gpu_memory_gib": peak, "reason": self.reason}


def _memory_problem(cfg: Config, mem: MemoryPlan, gpu_gib: float) -> Optional[tuple[str, str]]:
    if cfg.rollout.num_workers and mem.kv_available_gib < mem.kv_one_sequence_gib:
        return "rollout.gpu_memory_utilization", (
            f"vLLM's budget leaves {mem.kv_available_gib:.1f} GiB per GPU for the KV cache, less than one "
            f"full-length sequence needs ({mem.kv_one_sequence_gib:.2f} GiB): raise rollout.gpu_memory_utilization "
            f"or rollout.tensor_parallel_size")
    phase, peak = max(mem.phases.items(), key=lambda kv: kv[1])
    usable = USABLE_FRACTION * gpu_gib
    if peak <= usable:
        return None
    field_name, advice = _advice(cfg, mem, phase, usable)
    return field_name, (f"the {phase} phase needs {peak:.1f} GiB per GPU, more than {usable:.1f} GiB "
                        f"({USABLE_FRACTION:.0%} of {gpu_gib:g} GiB): {advice}")


def _advice(cfg: Config, mem: MemoryPlan, phase: str, usable: float) -> tuple[str, str]:
    """The one setting most likely to make ``phase`` fit in ``usable`` GiB, with why."""
    ln = cfg.learner
    states = sum(t.gib for t in mem.terms if t.name.endswith(("weights", "gradients", "optimizer"))
                 and not t.name.startswith("  "))
    work = mem.gib("activations") + mem.gib("logits")
    if phase == "learn" and cfg.rollout.sleep_level == 0 and cfg.rollout.num_workers:
        budget = mem.gib("vLLM budget")
        return "rollout.sleep_level", (f"set rollout.sleep_level=1 so the engines free their {budget:.1f} GiB "
                                       "while the learner trains")
    if phase == "rollout":
        room = usable - (mem.phases["rollout"] - mem.gib("vLLM budget"))
        util = room / (usable / USABLE_FRACTION)
        if room - mem.gib("  of which weights") - 1.0 >= mem.kv_one_sequence_gib:
            return "rollout.gpu_memory_utilization", (f"lower rollout.gpu_memory_utilization to {util:.2f} or less, "
                                                      "or offload the learner (learner.offload_optimizer=true)")
    if work > states and (ln.micro_batch_size > 1 or not ln.gradient_checkpointing):
        if not ln.gradient_checkpointing:
            return "learner.gradient_checkpointing", (f"activations and logits take {work:.1f} GiB: "
                                                      "set learner.gradient_checkpointing=true")
        return "learner.micro_batch_size", f"activations and logits take {work:.1f} GiB: lower learner.micro_batch_size"
    if not ln.offload_optimizer:
        return "learner.offload_optimizer", (f"model states take {states:.1f} GiB: set learner.offload_optimizer=true "
                                             "(Adam states and gradients on CPU)")
    if ln.zero_stage < 3:
        return "learner.zero_stage", f"model states take {states:.1f} GiB: set learner.zero_stage=3 (shard the weights)"
    if not ln.offload_params:
        return "learner.offload_params", f"model states take {states:.1f} GiB: set learner.offload_params=true"
    return "learner.num_ranks", "shard over more GPUs (learner.num_ranks, more nodes) or use a smaller model"


def make_plan(cfg: Config, shape: ClusterShape) -> Plan:
    """Place the job's actors on ``shape`` and estimate the memory of each GPU; never raises for
    a job that does not fit (``Plan.reason`` says why), only for an unknown model architecture."""
    placement = place(cfg, shape)
    gpus = total_demand(cfg, shape)["GPU"]
    if placement.problem is not None:
        return Plan(placement, None, shape, gpus, *placement.problem)
    uses_gpus = any(a.gpus_per_bundle > 0 for a in placement.actors if a.group in ("rollout", "learner", "critic"))
    if not uses_gpus or shape.gpu_memory_gib is None:
        return Plan(placement, None, shape, gpus)
    mem = estimate(cfg, model_shape(cfg.model), shape.gpu_memory_gib)
    problem = _memory_problem(cfg, mem, shape.gpu_memory_gib)
    return Plan(placement, mem, shape, gpus, *(problem or ("", "")))


def check_plan(cfg: Config, available: ClusterShape) -> Plan:
    """``make_plan``, raising ``ConfigError`` naming the setting to change when the job does not fit."""
    plan = make_plan(cfg, available)
    if not plan.fits:
        raise ConfigError(plan.field_name, plan.reason)
    return plan


def _span(bundles: tuple[int, ...]) -> str:
    if not bundles:
        return "-"
    return str(bundles[0]) if len(bundles) == 1 else f"{bundles[0]}-{bundles[-1]}"


def _placement_lines(cfg: Config, plan: Plan) -> list[str]:
    p = plan.placement
    lines = [f"placement: {p.mode}"]
    for group in p.groups:
        b = group.bundles[0]
        lines.append(f"  placement group {group.name!r}: {len(group.bundles)} bundles, first {{GPU: {b.gpus:g}, "
                     f"CPU: {b.cpus:g}}}" + (f"; each role takes {gpu_share(cfg):g} GPU of a bundle"
                                             if p.mode == "colocated" else ""))
    lines.append(f"  {'group':<10}{'count':>6}  {'GPU per actor':<18}{'CPU':>5}  node:bundles")
    for name in ("rollout", "learner", "critic", "retrieval", "reward"):
        actors = p.of(name)
        if not actors:
            continue
        a = actors[0]
        gpu = f"{len(a.bundles)} x {a.gpus_per_bundle:g}" if len(a.bundles) > 1 else f"{a.gpus_per_bundle:g}"
        where = " ".join(f"{x.node}:{_span(x.bundles)}" for x in actors)
        lines.append(f"  {name:<10}{len(actors):>6}  {gpu:<18}{a.cpus:>5g}  {where}")
    if cfg.retrieval.backend == "http":
        lines.append(f"  retrieval: the server at {cfg.retrieval.url} (retrieval.backend=http), no actors")
    return lines


def format_plan(cfg: Config, plan: Plan) -> str:
    """The human-readable plan ``launch.plan`` prints above its JSON line."""
    shape = plan.shape
    lines = [f"cluster: {len(shape.nodes)} node(s), {shape.gpus:g} GPUs"
             + (f" of {shape.gpu_memory_gib:g} GiB" if shape.gpu_memory_gib else "")
             + f"; model {cfg.model.name}; learner ZeRO-{cfg.learner.zero_stage} over {cfg.learner.num_ranks} ranks"
             + f", offload optimizer {cfg.learner.offload_optimizer} params {cfg.learner.offload_params}"]
    if plan.placement.actors:
        lines += _placement_lines(cfg, plan)
    if plan.memory is not None:
        lines.append("GPU memory per GPU (GiB = 2^30 B; N parameters, m micro-batch, S prompt + response tokens):")
        lines += [f"  {t.name:<26}{t.gib:>8.2f}  {t.formula}" for t in plan.memory.terms]
        lines.append("  phases: " + ", ".join(f"{k} {v:.1f}" for k, v in plan.memory.phases.items())
                     + f"; peak {plan.memory.peak_gib:.1f} of {shape.gpu_memory_gib:g}")
        if plan.memory.kv_needed_gib > plan.memory.kv_available_gib:
            lines.append("  note: the rollout batch's KV cache exceeds the free budget: vLLM runs it in waves")
    elif plan.placement.actors:
        lines.append("GPU memory: not checked (no GPU in the job, or the GPU memory is unknown)")
    if not plan.fits:
        lines.append(f"does not fit: {plan.field_name}: {plan.reason}")
    return "\n".join(lines)
