"""GPU memory per GPU: the learner's states under ZeRO and offload, activations with
checkpointing, vLLM's budget and the KV cache of the rollout batch (docs/cluster.md has
the formulas and their assumptions).

Runs in the driver and in ``launch.plan``; pure arithmetic, no CUDA. Estimates, not
measurements: nothing here has been checked against a real GPU yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.config import Config
from workers.plan.placement import learner_sets
from workers.plan.shapes import GIB, ModelShape

CONTEXT_GIB = 1.0
"""CUDA context, NCCL buffers and allocator slack of one process on a GPU (assumed)."""
ENGINE_RESERVE_GIB = 1.0
"""vLLM's profiled forward-pass peak inside its budget, besides weights and KV cache (assumed)."""
SLEEP_RESIDUE_GIB = 1.0
"""What an engine keeps on its GPUs while asleep (context, CUDA graphs; assumed)."""
KV_BYTES = 2
"""bf16/fp16 KV cache."""
USABLE_FRACTION = 0.9
"""A phase fits when it needs at most this fraction of a GPU: the rest is left for allocator
fragmentation and the error of these estimates."""


@dataclass(frozen=True)
class Term:
    """One line of the estimate."""

    name: str
    gib: float
    formula: str


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory by phase on the most loaded GPU of each kind."""

    terms: tuple[Term, ...]
    """Every term, in print order."""
    phases: dict[str, float]
    """Phase name (rollout, learn; or learner GPU, rollout GPU when separate) -> GiB."""
    kv_needed_gib: float
    """KV cache for one engine's share of the rollout batch at full length, per GPU."""
    kv_available_gib: float
    """What vLLM's budget leaves for the KV cache, per GPU."""
    kv_one_sequence_gib: float
    """KV cache of one full-length sequence, per GPU (below it vLLM cannot start)."""

    @property
    def peak_gib(self) -> float:
        """The largest phase."""
        return max(self.phases.values())

    def gib(self, name: str) -> float:
        """A term's value (0 when absent)."""
        return sum(t.gib for t in self.terms if t.name == name)


def weight_bytes(cfg: Config) -> int:
    """Bytes per parameter of the trained weights: 2 for bf16/fp16, 4 for fp32 (GPUs default to bf16)."""
    if cfg.learner.precision == "fp32" or cfg.model.dtype == "float32":
        return 4
    return 2


def sequence_tokens(cfg: Config) -> int:
    """S: the longest trajectory, prompt plus response (actions and observations)."""
    return cfg.rollout.max_prompt_tokens + cfg.rollout.max_response_tokens


def learner_states(cfg: Config, shape: ModelShape) -> list[Term]:
    """Weights, gradients and Adam states of policy and critic, and the frozen reference, per rank."""
    ln, b = cfg.learner, weight_bytes(cfg)
    w, z = ln.num_ranks, ln.zero_stage
    k = 12 if b == 2 else 8  # Adam m and v in fp32, plus fp32 master weights under mixed precision
    on_gpu_params = not (ln.offload_params and z == 3)
    models = [("policy", shape.params)]
    if ln.advantage_estimator == "gae":
        models.append(("critic", shape.critic_params))
    terms = []
    params_note = "" if on_gpu_params else " (offloaded)"
    optim_note = " (offloaded)" if ln.offload_optimizer else ""
    for name, n in models:
        terms.append(Term(f"{name} weights", on_gpu_params * b * n / (w if z == 3 else 1) / GIB,
                          f"{b} B x {n / 1e9:.2f}e9" + (f" / {w}" if z == 3 else "") + params_note))
        terms.append(Term(f"{name} gradients", (not ln.offload_optimizer) * b * n / (w if z >= 2 else 1) / GIB,
                          f"{b} B x N" + (f" / {w}" if z >= 2 else "") + optim_note))
        terms.append(Term(f"{name} optimizer", (not ln.offload_optimizer) * k * n / (w if z >= 1 else 1) / GIB,
                          f"{k} B x N" + (f" / {w}" if z >= 1 else "") + optim_note))
    if ln.kl_coef > 0 or ln.use_kl_loss:
        terms.append(Term("reference weights", on_gpu_params * b * shape.params / (w if z == 3 else 1) / GIB,
                          f"{b} B x N" + (f" / {w}" if z == 3 else "")))
    return terms


def learner_working_set(cfg: Config, shape: ModelShape) -> list[Term]:
    """What one forward/backward pass adds: gathered ZeRO-3 parameters, activations, logits."""
    ln, b = cfg.learner, weight_bytes(cfg)
    h, layers, v = shape.hidden_size, shape.num_layers, shape.vocab_size
    tokens = ln.micro_batch_size * sequence_tokens(cfg)
    per_layer = b * (6 * h + 2 * shape.num_kv_heads * shape.head_dim + 4 * shape.intermediate_size)
    if ln.gradient_checkpointing:
        activations = tokens * (layers * b * h + per_layer)
        formula = f"m x S = {tokens} tokens x (L x {b}h + {per_layer} B of one layer)"
    else:
        activations = tokens * layers * per_layer
        formula = f"m x S = {tokens} tokens x L x {per_layer} B"
    logprob_tokens = (ln.logprob_micro_batch_size or ln.micro_batch_size) * sequence_tokens(cfg)
    logits = max(tokens * v * (b + 8), logprob_tokens * v * (b + 4))
    terms = [Term("activations", activations / GIB, formula),
             Term("logits", logits / GIB, f"m x S x V x ({b} + 4 + 4) B (logits, fp32 log-softmax, its gradient)")]
    if ln.zero_stage == 3:
        gathered = 2 * b * max(shape.embedding_params, shape.layer_params)
        terms.insert(0, Term("ZeRO-3 gathered", gathered / GIB, f"2 x {b} B x max(V x h, one layer) (use + prefetch)"))
    return terms


def engine_terms(cfg: Config, shape: ModelShape, gpu_gib: float) -> tuple[list[Term], float, float, float]:
    """vLLM's budget on each of an engine's GPUs, and the KV cache: needed, available, one sequence."""
    ro, b = cfg.rollout, weight_bytes(cfg)
    t = ro.tensor_parallel_size
    budget = ro.gpu_memory_utilization * gpu_gib
    weights = b * shape.params / t / GIB
    kv_token = 2 * shape.num_layers * math.ceil(shape.num_kv_heads / t) * shape.head_dim * KV_BYTES
    seqs = math.ceil(cfg.trainer.batch_size * ro.n_samples / max(ro.num_workers, 1))
    s = sequence_tokens(cfg)
    needed, one = seqs * s * kv_token / GIB, s * kv_token / GIB
    available = budget - weights - ENGINE_RESERVE_GIB
    terms = [Term("vLLM budget", budget, f"gpu_memory_utilization {ro.gpu_memory_utilization:g} x {gpu_gib:g} GiB"),
             Term("  of which weights", weights, f"{b} B x N / tp {t}"),
             Term("  of which KV cache free", available, f"budget - weights - {ENGINE_RESERVE_GIB:g} GiB reserve"),
             Term("  KV cache of the batch", needed, f"{seqs} seqs x S {s} x {kv_token} B "
                  f"(2 x L x ceil(kv_heads / tp) x head_dim x {KV_BYTES} B)")]
    return terms, needed, available, one


def estimate(cfg: Config, shape: ModelShape, gpu_gib: float) -> MemoryPlan:
    """Per-GPU memory in each phase of a step (docs/cluster.md, "GPU memory")."""
    states = learner_states(cfg, shape)
    work = learner_working_set(cfg, shape)
    static = sum(t.gib for t in states)
    dynamic = sum(t.gib for t in work)
    procs = learner_sets(cfg)
    ctx = Term("CUDA contexts", procs * CONTEXT_GIB, f"{CONTEXT_GIB:g} GiB x {procs} learner process(es)")
    engine, needed, available, one = engine_terms(cfg, shape, gpu_gib) if cfg.rollout.num_workers \
        else ([], 0.0, 0.0, 0.0)
    budget = engine[0].gib if engine else 0.0
    if cfg.cluster.placement == "colocated":
        asleep = SLEEP_RESIDUE_GIB if (cfg.rollout.sleep_level and engine) else budget
        phases = {"rollout": budget + static + ctx.gib,
                  "learn": asleep + static + dynamic + ctx.gib}
    else:
        phases = {"learner GPU": static + dynamic + ctx.gib}
        if engine:
            phases["rollout GPU"] = budget
    return MemoryPlan(tuple(states + work + [ctx] + engine), phases, needed, available, one)
