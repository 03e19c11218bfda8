"""Benchmark: weight sync by broadcast from learner rank 0 vs the object-store + file path.

Runs in the driver (a local Ray cluster on loopback), in the learner ranks (DeepSpeed
ZeRO-3 on gloo, ``--ranks`` of them) and in ``--engines`` vLLM rollout actors, all on CPU.
Both methods run in one process on the same actors, alternating, ``--repeats`` times each:

- ``object_store`` (``rollout.weight_sync=object_store``, the fallback): every learner rank
  gathers the state dict and returns it through the object store; each engine writes it to
  a safetensors file in /dev/shm and reloads from it;
- ``broadcast`` (``rollout.weight_sync=broadcast``, the default): the learner ranks send
  their ZeRO-3 partitions straight into rank 0's bucket buffer (``--bucket-mb``), rank 0
  broadcasts it to every vLLM worker while the next bucket is gathered, and each worker
  loads it through vLLM's weight loader while the next one arrives.

For each method: median sync time, ``copy_s`` (one in-memory copy of the weights, in this
process: the floor of a sync to E engines is about E copies), and the bytes per sync put
in the object store and written to files. The object-store bytes are the objects the path
puts (the state dict once per learner rank, or the pickled manifest); the file bytes are
what the path writes (the state dict once per engine, or nothing). After the last sync the
engines' log-probs of a fixed sequence are checked against the learner's weights. With
``--profile`` it also prints the median seconds per phase of a broadcast: the driver's
(``alive`` check, ``form``-ing the group, ``transfer``), each learner rank's (``gather``
into the bucket, waiting for the previous ``broadcast``) and each engine's (``total`` actor
call; its first worker's ``init``/``finalize`` of vLLM's layerwise reload, waiting to
``receive`` a bucket, ``load``-ing one). The last line is one JSON object for the broadcast.

    python -m benchmarks.bench_weight_sync                        # tiny policy, 2 engines
    python -m benchmarks.bench_weight_sync --model 100m --engines 2 [--profile]
"""

from __future__ import annotations

import os

# Before ray or vllm is imported: a local cluster and vLLM bind to 127.0.0.1 (DESIGN.md 5).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import argparse
import glob
import json
import logging
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.config import LearnerConfig, RolloutConfig

logger = logging.getLogger(__name__)


def no_search(queries: list[str], topk: int) -> list[list[Any]]:
    """The benchmark never rolls out; rollout actors still need a search function."""
    return [[] for _ in queries]


def model_path(args: argparse.Namespace, workdir: Path) -> str:
    from benchmarks.bench_rollout import build_big_model, prepare_inputs

    _, policy = prepare_inputs(workdir, None)
    return policy if args.model == "tiny" else str(build_big_model(policy, workdir / "big-qwen2"))


def copy_seconds(path: str, repeats: int) -> tuple[float, int]:
    """Median time of one in-memory copy of the model's weights, and their bytes."""
    import torch
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    unique = {id(t): t for t in state.values()}.values()
    nbytes = sum(t.numel() * t.element_size() for t in unique)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        copies = [t.clone() for t in unique]
        times.append(time.perf_counter() - started)
        del copies
    return statistics.median(times), nbytes


def weight_files() -> list[str]:
    return [p for root in ("/dev/shm", tempfile.gettempdir())
            for p in glob.glob(os.path.join(root, "stepsearch-weights-*"))]


def max_logprob_gap(path: str, learner: Any, rollout: Any) -> float:
    """Largest |engine - learner| log-prob over a fixed sequence, over the engines."""
    import numpy as np
    import ray
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.load_state_dict(learner.export_weights(), strict=True)
    seq = [int(x) for x in np.random.default_rng(0).integers(5, 500, size=32)]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0, :-1]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(seq[1:])[:, None])[:, 0].numpy()
    got = [np.array(ray.get(a.score.remote([seq]))[0]) for a in rollout.actors]
    return float(max(np.abs(g - expected).max() for g in got))


def phase_seconds(learner: Any, rollout: Any, sync: Any) -> dict[str, dict[str, float]]:
    """Seconds per phase of the last broadcast: the driver's, each learner rank's, each engine's."""
    import ray

    out = {"driver": dict(sync.last_seconds)}
    for k, seconds in enumerate(ray.get([a.weight_sync_seconds.remote() for a in learner.policy_ranks])):
        out[f"learner{k}"] = seconds
    for k, seconds in enumerate(ray.get([a.weight_sync_seconds.remote() for a in rollout.actors])):
        out[f"engine{k}"] = seconds
    return out


def print_profile(rounds: list[dict[str, dict[str, float]]]) -> None:
    """Median seconds per phase over the timed broadcasts, one line per process."""
    print("\nbroadcast profile (median seconds per phase over the timed syncs):")
    for who in rounds[0]:
        phases = {p: statistics.median(r[who].get(p, 0.0) for r in rounds) for p in rounds[0][who]}
        print(f"  {who:<9} " + "  ".join(f"{p} {s:.3f}" for p, s in phases.items()))


def run(args: argparse.Namespace, path: str) -> dict[str, Any]:
    import ray

    from actors.learner import LearnerGroup
    from actors.rollout import RolloutGroup
    from actors.weight_sync import BroadcastSync

    copy_s, model_bytes = copy_seconds(path, 5)
    learner_cfg = LearnerConfig(engine="deepspeed", zero_stage=3, num_ranks=args.ranks, num_cpus_per_rank=0.5,
                                mini_batch_size=2 * args.ranks, micro_batch_size=2, kl_coef=0.0,
                                advantage_estimator="grpo", sync_bucket_mb=args.bucket_mb)
    rollout_cfg = RolloutConfig(engine="vllm", num_workers=args.engines, num_cpus_per_worker=1.0,
                                max_prompt_tokens=128, max_response_tokens=128, kv_cache_gib=1.0)
    rollout = RolloutGroup(rollout_cfg, path, no_search, dtype="float32")
    learner = LearnerGroup(learner_cfg, path, seed=0)
    sync = BroadcastSync(learner, timeout_s=120.0)
    rollout.use_broadcast(sync)  # object_store rounds still use set_weights
    times: dict[str, list[float]] = {"object_store": [], "broadcast": []}
    profile: list[dict[str, dict[str, float]]] = []
    version = 0
    try:
        for r in range(args.repeats + 1):  # round 0 warms up (forms the group, plans buckets)
            for method in times:
                version += 1
                started = time.perf_counter()
                if method == "broadcast":
                    rollout.sync_broadcast(version)
                else:
                    rollout.set_weights(learner.export_weights_ref(), version)
                elapsed = time.perf_counter() - started
                if r:
                    times[method].append(elapsed)
                    if method == "broadcast" and args.profile:
                        profile.append(phase_seconds(learner, rollout, sync))
                logger.info("round %d %s: %.3f s", r, method, elapsed)
        manifest_bytes = len(pickle.dumps(ray.get(learner.policy_ranks[0].weight_manifest.remote())))
        gap = max_logprob_gap(path, learner, rollout)
    finally:
        rollout.shutdown()
        learner.shutdown()
    return {"copy_s": copy_s, "model_bytes": model_bytes, "times": times, "gap": gap, "profile": profile,
            "manifest_bytes": manifest_bytes, "files_left": weight_files()}


def report(args: argparse.Namespace, res: dict[str, Any]) -> str:
    E, B = args.engines, res["model_bytes"]
    rows = {"object_store": (args.ranks * B, E * B), "broadcast": (res["manifest_bytes"], 0)}
    print(f"\nweight sync, model {args.model} ({B / 1e6:.1f} MB), {E} engines, learner ZeRO-3 x {args.ranks} "
          f"ranks, medians of {args.repeats}; copy_s {res['copy_s']:.4f} s (floor ~ E x copy_s = "
          f"{E * res['copy_s']:.3f} s)")
    print(f"{'method':<14}{'sync_s':>9}{'ratio':>8}{'object_store_bytes':>20}{'file_bytes':>14}")
    stats = {}
    for method, (obj, files) in rows.items():
        s = statistics.median(res["times"][method])
        stats[method] = s
        print(f"{method:<14}{s:>9.3f}{s / (E * res['copy_s']):>8.2f}{obj:>20d}{files:>14d}")
    if res["profile"]:
        print_profile(res["profile"])
    print(f"engines vs learner after the last broadcast: max |log-prob gap| {res['gap']:.2e}; "
          f"weight files left: {len(res['files_left'])}")
    line = {"method": "broadcast", "engines": E, "model_bytes": B, "sync_s": round(stats["broadcast"], 4),
            "copy_s": round(res["copy_s"], 4), "ratio": round(stats["broadcast"] / (E * res["copy_s"]), 3),
            "object_store_bytes": rows["broadcast"][0], "file_bytes": 0,
            "file_path_sync_s": round(stats["object_store"], 4)}
    return json.dumps(line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "100m"), default="tiny", help="tiny policy or ~100M Qwen2")
    parser.add_argument("--engines", type=int, choices=(1, 2), default=2, help="vLLM rollout actors")
    parser.add_argument("--ranks", type=int, default=2, help="learner ranks (ZeRO-3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed syncs per method (after one warm-up)")
    parser.add_argument("--bucket-mb", type=float, default=LearnerConfig.sync_bucket_mb,
                        help="learner.sync_bucket_mb")
    parser.add_argument("--profile", action="store_true",
                        help="print seconds per phase of each broadcast (driver, learner ranks, engines)")
    parser.add_argument("--workdir", default=None, help="data and models (default: a reused dir under the temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from actors.cluster import init_ray
    from workers.config import ClusterConfig

    workdir = Path(args.workdir or os.path.join(tempfile.gettempdir(), "stepsearch-bench-weight-sync"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = model_path(args, workdir)
    init_ray(ClusterConfig(num_cpus=4, loopback=True), logging_level="WARNING")
    try:
        line = report(args, run(args, path))
    finally:
        import ray

        ray.shutdown()
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
