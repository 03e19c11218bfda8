"""Where a StePPO step's time goes, and how much memory the whole job takes.

    python -m benchmarks.bench_trainer [hydra overrides...]     # default: the tiny CPU preset

Runs the training job in this process (local Ray cluster on loopback), then prints the
per-step time split (rollout, reward, learn, sync, driver overhead) averaged over the
steps after the first (the first includes warm-up), the driver overhead as a fraction of
step time, and the peak memory of the whole job: the proportional set size (PSS, shared
pages split between processes) summed over the driver and every process it started
(Ray, actors, vLLM engines), sampled every second.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import psutil

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

PHASES = ("time/rollout_s", "time/reward_s", "time/learn_s", "time/sync_s", "time/driver_overhead_s")


class PeakMemory:
    """Samples the summed PSS of this process tree in a background thread."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        root = psutil.Process()
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str]) -> int:
    from launch.config import load_config
    from launch.report import table
    from launch.train import train
    from workers.tracking import read_metrics

    run_dir = Path(f"runs/bench-trainer-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = load_config([*argv, f"trainer.run_dir={run_dir}"])
    with PeakMemory() as memory:
        summary = train(cfg, run_dir)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] > 1] or read_metrics(
        run_dir / "metrics.jsonl")
    mean = {k: sum(r.get(k, 0.0) for r in records) / len(records) for k in (*PHASES, "time/step_s")}
    step = mean["time/step_s"]
    rows = [(k.split("/")[1].removesuffix("_s"), mean[k], f"{100 * mean[k] / step:.1f}%") for k in PHASES]
    rows.append(("step", step, "100%"))
    print(f"\nStePPO step time, mean over steps 2..{summary['steps']} ({len(records)} steps)")
    print(table(rows, ("phase", "seconds", "share")))
    overhead = mean["time/driver_overhead_s"] / step
    verdict = "met" if overhead < 0.05 else "NOT met"
    print(f"driver overhead: {100 * overhead:.2f}% of step time (target < 5%: {verdict})")
    print(f"peak memory of the job (PSS, all processes): {memory.peak / 2**30:.2f} GiB (limit 12 GiB: "
          f"{'met' if memory.peak < 12 * 2**30 else 'NOT met'})")
    return 0 if overhead < 0.05 and memory.peak < 12 * 2**30 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
