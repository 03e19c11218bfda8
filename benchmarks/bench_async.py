"""Synchronous vs asynchronous StePPO steps on one set of actors.

    python -m benchmarks.bench_async [--steps N] [hydra overrides...]

Runs in this process (local Ray cluster on loopback). One trainer, one config: blocks of
sync steps and async steps alternate (sync, async, sync, async), N steps of each in all,
so load from other jobs on a shared machine falls on both arms alike. The first step of
each block is a warm-up and is not counted: a sync block's first step follows the async
pipeline's drain, an async block's first step has no batch rolled out ahead. Prints the
mean step time of each arm, the phase split, each actor group's busy fraction (seconds
its phases ran / wall time of the counted steps), and as its last line one JSON object
``{"sync_step_s", "async_step_s", "speedup", "max_staleness_seen", "max_staleness"}``.

Threads: the defaults give the rollout actor and the learner rank one torch thread each
(``learner.num_threads=1``; Ray gives a 1-CPU actor one OpenMP thread), so on a 2-core
machine both sides run at once instead of fighting over both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

DEFAULTS = ["trainer=tiny", "rollout.engine=hf", "learner.num_threads=1", "trainer.batch_size=4",
            "learner.mini_batch_size=4", "learner.micro_batch_size=2", "trainer.tensorboard=false",
            "trainer.eval_start=false", "rollout.max_response_tokens=256", "rollout.max_action_tokens=48"]
"""The tiny preset from random weights, with the hf engine (one thread) and small batches."""

PHASES = ("time/rollout_s", "time/reward_s", "time/learn_s", "time/sync_s", "time/rollout_wait_s")


def _mean(records: list[dict[str, float]], key: str) -> float:
    return sum(r.get(key, 0.0) for r in records) / max(1, len(records))


def run_blocks(trainer: Any, steps: int, blocks: int) -> tuple[list[dict], list[dict], int]:
    """Alternate sync and async blocks; returns the counted sync and async step metrics."""
    from actors.async_loop import AsyncRollout

    per_block = max(2, steps // blocks + 1)  # +1: the block's warm-up step
    sync: list[dict] = []
    asyn: list[dict] = []
    seen = 0
    for b in range(2 * blocks):
        is_async = b % 2 == 1
        if is_async:
            trainer.async_rollout = AsyncRollout(trainer)
        for i in range(per_block):
            metrics = trainer.train_step()
            label = "async" if is_async else "sync"
            print(f"{label} block {b // 2 + 1} step {trainer.step}: {metrics['time/step_s']:.2f} s", flush=True)
            if i > 0:
                (asyn if is_async else sync).append(metrics)
        if is_async:
            seen = max(seen, trainer.async_rollout.max_staleness_seen)
            trainer.async_rollout.close()  # the batch rolled out ahead is dropped: the next block is sync
            trainer.async_rollout = None
            trainer.sync_weights()
    return sync, asyn, seen


def report(sync: list[dict], asyn: list[dict]) -> tuple[float, float]:
    """Print the two arms' step times, phase split and busy fractions; return the mean step times."""
    from launch.report import table

    a, b = _mean(sync, "time/step_s"), _mean(asyn, "time/step_s")
    rows = []
    for key in PHASES:
        rows.append((key.split("/")[1].removesuffix("_s"), f"{_mean(sync, key):.2f}", f"{_mean(asyn, key):.2f}"))
    rows.append(("step", f"{a:.2f}", f"{b:.2f}"))
    print(f"\nmean over {len(sync)} sync and {len(asyn)} async steps (seconds; async rollout/reward run "
          "in the background, overlapping learn)")
    print(table(rows, ("phase", "sync", "async")))
    for name, recs, step in (("sync", sync, a), ("async", asyn, b)):
        roll = _mean(recs, "time/rollout_s") + _mean(recs, "time/reward_s")
        learn = _mean(recs, "time/learn_s") + _mean(recs, "time/sync_s")
        print(f"{name}: busy fraction rollout+reward {roll / step:.2f}, learner {learn / step:.2f}")
    return a, b


def main(argv: list[str]) -> int:
    from actors.cluster import init_ray
    from actors.trainer import StePPOTrainer
    from launch.config import load_config
    from launch.train import _prepare_inputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="counted steps of each arm")
    parser.add_argument("--blocks", type=int, default=2, help="sync/async block pairs")
    args, overrides = parser.parse_known_args(argv)
    run_dir = Path(f"runs/bench-async-{time.strftime('%Y%m%d-%H%M%S')}")
    total = 2 * args.blocks * (args.steps // args.blocks + 2) + 4
    cfg = load_config([*DEFAULTS, *overrides, f"trainer.total_steps={total}", f"trainer.run_dir={run_dir}"])
    init_ray(cfg.cluster, quiet=True)
    cfg, model_path = _prepare_inputs(cfg)
    trainer = StePPOTrainer(cfg, run_dir, model_path)
    try:
        trainer.setup()
        sync, asyn, seen = run_blocks(trainer, args.steps, args.blocks)
    finally:
        trainer.shutdown()
    a, b = report(sync, asyn)
    print(json.dumps({"sync_step_s": round(a, 3), "async_step_s": round(b, 3), "speedup": round(a / b, 3),
                      "max_staleness_seen": seen, "max_staleness": cfg.trainer.max_staleness}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
