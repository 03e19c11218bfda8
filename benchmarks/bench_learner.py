"""Learner throughput: tokens/s of a PPO update (forward + backward + optimizer step).

Runs as a script on one machine (CPU here; GPUs work the same): one process, one rank.
Compares DeepSpeed ZeRO stages, in fp32 and in bf16 (``learner.precision``), against the
plain-torch engine (fp32) on the same model, batch and PPO loss, and prints the ratios:
the DeepSpeed overhead on this machine and what bf16 buys. ``--critic-warmup`` instead times
a critic warmup step (forward passes, targets, critic-only update) with and without the
policy and reference passes (``values_only``), interleaved on one DeepSpeed worker.

    python -m benchmarks.bench_learner                     # the tiny policy, short episodes
    python -m benchmarks.bench_learner --model toyworld    # the learning preset's policy and lengths
    python -m benchmarks.bench_learner --model 100m        # a ~100M-parameter Qwen2
    python -m benchmarks.bench_learner --model toyworld --critic-warmup
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workers.config import LearnerConfig, TinyModelConfig
from workers.learner.data import PPOBatch, build_ppo_batch
from workers.learner.worker import LearnerWorker
from workers.types import GroundTruth, RewardBatch, TrajectoryBatch


@dataclass(frozen=True)
class Shape:
    """A benchmark model and batch."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    batch: int
    prompt: int
    response: int


TINY = TinyModelConfig()
SHAPES = {
    "tiny": Shape(TINY.vocab_size, TINY.hidden_size, TINY.num_layers, TINY.num_heads,
                  TINY.intermediate_size, batch=8, prompt=64, response=192),
    "toyworld": Shape(5000, TINY.hidden_size, TINY.num_layers, TINY.num_heads, TINY.intermediate_size,
                      batch=8, prompt=80, response=600),
    "100m": Shape(32000, 768, 12, 12, 2048, batch=4, prompt=32, response=96),
}


def build_model(shape: Shape, directory: Path) -> str:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.hidden,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.heads, intermediate_size=shape.ffn,
                         head_dim=shape.hidden // shape.heads, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f}M parameters")
    model.save_pretrained(str(directory))
    return str(directory)


def build_batch(shape: Shape) -> tuple[TrajectoryBatch, PPOBatch]:
    rng = np.random.default_rng(0)
    B, P, T = shape.batch, shape.prompt, shape.response
    mask = np.ones((B, T), np.int8)
    mask[:, T // 3:T // 2] = 0  # an observation block
    traj = TrajectoryBatch(
        prompt_ids=rng.integers(1, shape.vocab, (B, P)).astype(np.int32),
        prompt_lengths=np.full(B, P), response_ids=rng.integers(1, shape.vocab, (B, T)).astype(np.int32),
        response_lengths=np.full(B, T), action_mask=mask,
        rollout_logprobs=np.zeros((B, T), np.float32), turns=((),) * B, response_text=("",) * B,
        sample_ids=tuple(map(str, range(B))), ground_truth=(GroundTruth(target=("x",)),) * B,
        data_sources=("bench",) * B, policy_version=0)
    adv = rng.normal(size=(B, T)).astype(np.float32) * mask
    targets = PPOBatch(advantages=adv, returns=adv, old_logprobs=np.full((B, T), -6.0, np.float32),
                       ref_logprobs=None, old_values=None, stats={})
    return traj, targets


def measure(cfg: LearnerConfig, model_path: str, traj: TrajectoryBatch, targets: PPOBatch,
            repeats: int, port: int) -> float:
    """Tokens per second of ``ppo_update`` (after one warm-up update)."""
    worker = LearnerWorker(cfg, model_path, roles=("policy",))
    worker.init_distributed(0, 1, "127.0.0.1", port)
    worker.ppo_update(traj, targets)
    start = time.perf_counter()
    for _ in range(repeats):
        worker.ppo_update(traj, targets)
    elapsed = time.perf_counter() - start
    tokens = int(traj.prompt_lengths.sum() + traj.response_lengths.sum()) * repeats
    return tokens / elapsed


def critic_warmup(cfg: LearnerConfig, model_path: str, traj: TrajectoryBatch, repeats: int,
                  port: int) -> None:
    """Seconds per critic warmup step, all passes vs the critic's alone, alternating."""
    worker = LearnerWorker(cfg, model_path, roles=("policy", "critic"))
    worker.init_distributed(0, 1, "127.0.0.1", port)
    B, T = traj.response_ids.shape
    token_rewards = np.zeros((B, T), np.float32)
    token_rewards[:, -1] = np.random.default_rng(1).normal(size=B)
    zeros = np.zeros(B, np.float32)
    reward = RewardBatch(token_rewards=token_rewards, format_ok=zeros, answer_f1=zeros, exact_match=zeros,
                         key_score=zeros, outcome=zeros, num_searches=zeros)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for i in range(repeats + 1):  # the first round warms up both
        for values_only in (False, True):
            start = time.perf_counter()
            out = worker.compute(traj, values_only=values_only)
            targets = build_ppo_batch(traj, reward, cfg, out.get("old_logprobs", np.zeros((B, T), np.float32)),
                                      out.get("ref_logprobs"), out["values"])
            worker.ppo_update(traj, targets, update_policy=False)
            if i:
                seconds[values_only].append(time.perf_counter() - start)
    full, lean = float(np.median(seconds[False])), float(np.median(seconds[True]))
    print(f"critic warmup step, batch {B} x {traj.prompt_ids.shape[1] + T} tokens, DeepSpeed "
          f"zero-{cfg.zero_stage} {cfg.precision}, median of {repeats}:")
    print(f"  policy, reference and critic passes {full:.2f} s; critic passes only {lean:.2f} s; "
          f"{full / lean:.2f}x faster, {full - lean:.2f} s saved per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--stages", default="0,2,3", help="DeepSpeed ZeRO stages")
    parser.add_argument("--precisions", default="fp32,bf16", help="DeepSpeed learner.precision values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    parser.add_argument("--critic-warmup", action="store_true",
                        help="time a critic warmup step with and without the policy/reference passes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    shape = SHAPES[args.model]
    traj, targets = build_batch(shape)
    base = LearnerConfig(mini_batch_size=shape.batch, micro_batch_size=shape.batch // 2,
                         kl_coef=0.0, actor_lr=1e-6, num_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(shape, Path(tmp) / "model")
        if args.critic_warmup:
            precision = args.precisions.split(",")[-1]
            critic_warmup(LearnerConfig(**{**base.__dict__, "engine": "deepspeed", "zero_stage": 2,
                                           "precision": precision, "kl_coef": 0.001}),
                          path, traj, args.repeats, 29700)
            return
        torch_cfg = LearnerConfig(**{**base.__dict__, "engine": "torch"})
        rows = [("torch", measure(torch_cfg, path, traj, targets, args.repeats, 0))]
        for stage in (int(s) for s in args.stages.split(",")):
            for precision in args.precisions.split(","):
                cfg = LearnerConfig(**{**base.__dict__, "engine": "deepspeed", "zero_stage": stage,
                                       "precision": precision})
                rows.append((f"deepspeed zero-{stage} {precision}",
                             measure(cfg, path, traj, targets, args.repeats, 29700)))
        # Torch again at the end: the machine is shared, so the baseline is bracketed.
        rows.append(("torch (again)", measure(torch_cfg, path, traj, targets, args.repeats, 0)))
    torch_rate = max(rows[0][1], rows[-1][1])
    print(f"batch {shape.batch} x {shape.prompt + shape.response} tokens, "
          f"{args.threads} thread(s), {args.repeats} updates")
    print(f"{'engine':<24}{'tokens/s':>10}{'vs torch':>10}   (vs the better torch fp32 run)")
    for name, rate in rows:
        print(f"{name:<24}{rate:>10.0f}{rate / torch_rate:>10.2f}")
    by_name = dict(rows)
    for stage in args.stages.split(","):
        fp32, bf16 = by_name.get(f"deepspeed zero-{stage} fp32"), by_name.get(f"deepspeed zero-{stage} bf16")
        if fp32 and bf16:
            print(f"zero-{stage}: bf16 / fp32 = {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
