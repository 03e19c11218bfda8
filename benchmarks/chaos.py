"""A chaos run: a short StePPO job whose actors are killed at random moments.

    python -m benchmarks.chaos [--seed S] [--steps N] [hydra overrides...]

Runs the job in this process on a local Ray cluster on loopback: the tiny preset
(``trainer=tiny``, vLLM on CPU), ``--steps`` steps (default 8, at least 8), 2 rollout
workers. It SIGKILLs actor processes while the job runs:

- a rollout actor at a random moment of some steps, and at least once while the driver is
  inside a weight sync (``during_sync``; a kill that lands after the sync ended is counted
  as a plain rollout kill);
- the retrieval actor (replica 0) and a reward actor, each at a random moment of a step.

It counts trajectories by their sample ids: the ids the prompt sampler hands out (times
``rollout.n_samples``) are the expected ones; the ids of each batch the learner group is
given to train on are the trained ones. The last line printed is one JSON object:
``{"completed", "steps", "kills": {"rollout", "retrieval", "reward", "during_sync"},
"trajectories_expected", "trajectories_trained", "duplicates"}``; ``completed`` is true
when every step ran and every expected trajectory was trained exactly once (exit 0).
Driver-side timing and the kill log go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

BASE = ["trainer=tiny", "model.warm_start=none", "rollout.num_workers=2", "cluster.num_cpus=6",
        "trainer.batch_size=8", "trainer.eval_every=0", "trainer.save_every=0", "trainer.tensorboard=false",
        "trainer.critic_warmup_steps=0", "learner.mini_batch_size=8", "learner.micro_batch_size=4",
        "rollout.max_action_tokens=32", "rollout.max_response_tokens=256", "rollout.max_obs_tokens=96",
        "rollout.max_restarts=8"]
"""The tiny preset, 2 rollout workers; short responses so that 8 steps take minutes on 2 cores.
The plan kills rollout actors 4 times within minutes, more than the default budget of
``rollout.max_restarts`` (3 within an hour) allows, so the budget is raised here."""

KINDS = ("rollout", "retrieval", "reward")
ACTOR_CLASS = {"rollout": "RolloutActor", "retrieval": "RetrievalActor", "reward": "RewardActor"}


def actor_pids(class_name: str) -> list[int]:
    """Live processes of this job's actors of ``class_name`` (Ray titles them ``ray::[NAME:]Class``)."""
    import psutil

    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            head = proc.cmdline()[0].split(" ")[0] if proc.cmdline() else ""
            if head.startswith("ray::") and (head[5:].startswith(class_name) or f":{class_name}" in head) \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return sorted(out)


def descendants(pid: int) -> list[tuple[int, float]]:
    """(pid, start time) of every process below ``pid``."""
    import psutil

    try:
        return [(p.pid, p.create_time()) for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def reap_orphans(procs: set[tuple[int, float]]) -> list[int]:
    """Kill the processes a killed actor left running (a vLLM engine's workers outlive a
    SIGKILLed actor on CPU); returns those that were still alive. The start time must
    match, so a reused pid is never touched."""
    import psutil

    alive = []
    for pid, started in sorted(procs):
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
                proc.kill()
        except psutil.NoSuchProcess:
            continue
    return alive


class Chaos:
    """Kills actor processes on a plan: per step, the kinds to kill and when."""

    def __init__(self, steps: int, rng: random.Random) -> None:
        self.rng = rng
        self.kills: Counter[str] = Counter()
        self.log: list[str] = []
        self.in_sync = threading.Event()
        self.victims_children: set[tuple[int, float]] = set()  # processes a killed actor had started
        self.started = time.monotonic()
        # Step (1-based) -> kinds killed at a random moment of that step; "sync" kills a rollout
        # actor while the weight sync after that step's update runs. Step 1 measures the step
        # time (the random moments are drawn within it), so kills start at step 2.
        slots = list(range(2, steps + 1))
        plan: dict[int, list[str]] = {s: [] for s in range(1, steps + 1)}
        for kind in ("rollout", "sync", "retrieval", "reward", "rollout", "sync"):
            plan[rng.choice(slots)].append(kind)
        self.plan = plan
        self.step_time = 30.0

    def _kill(self, kind: str, during_sync: bool = False) -> None:
        pids = actor_pids(ACTOR_CLASS[kind])
        if not pids:
            self.log.append(f"{self._t()} no live {kind} actor to kill (restarting)")
            return
        pid = self.rng.choice(pids)
        self.victims_children.update(descendants(pid))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        landed_in_sync = during_sync and self.in_sync.is_set()
        self.kills[kind] += 1
        if landed_in_sync:
            self.kills["during_sync"] += 1
        self.log.append(f"{self._t()} killed {kind} actor pid {pid}{' during a weight sync' if landed_in_sync else ''}")

    def _t(self) -> str:
        return f"[{time.monotonic() - self.started:7.1f}s]"

    def at_step_start(self, step: int) -> list[threading.Timer]:
        """Arm this step's random-moment kills."""
        timers = []
        for kind in self.plan.get(step, []):
            if kind == "sync":
                continue
            timer = threading.Timer(self.rng.uniform(0.1, 0.8) * self.step_time, self._kill, (kind,))
            timer.daemon = True
            timer.start()
            timers.append(timer)
        return timers

    def sync_kill_due(self, step: int) -> bool:
        return "sync" in self.plan.get(step, [])

    def kill_during(self, fn: Callable[[], Any], delay_s: float) -> Any:
        """Run ``fn`` (a weight sync) and kill a rollout actor ``delay_s`` after it starts."""
        self.in_sync.set()
        timer = threading.Timer(delay_s, self._kill, ("rollout",), {"during_sync": True})
        timer.daemon = True
        timer.start()
        try:
            return fn()
        finally:
            self.in_sync.clear()  # a kill that lands after this is a plain rollout kill
            timer.join()


def _instrument(trainer: Any, chaos: Chaos, expected: list[list[str]], trained: list[list[str]]) -> None:
    """Record the ids handed out and the ids the learner group is given; kill during syncs."""
    import ray

    @ray.remote(num_cpus=0)
    def sample_ids(batch: Any) -> list[str]:
        return list(batch.sample_ids)

    n = trainer.cfg.rollout.n_samples
    next_batch = trainer.sampler.next_batch

    def sampled(size: int) -> Any:
        rows = next_batch(size)
        expected.append([f"{row.id}#{k}" for row in rows for k in range(n)])
        return rows

    trainer.sampler.next_batch = sampled
    update = trainer.learner.update

    def learner_update(traj_ref: Any, *args: Any, **kwargs: Any) -> Any:
        trained.append(ray.get(sample_ids.remote(traj_ref)))
        return update(traj_ref, *args, **kwargs)

    trainer.learner.update = learner_update
    group = trainer.rollout_group
    sync = group.sync_broadcast if group.broadcasting else group.set_weights

    def chaotic_sync(*args: Any) -> None:  # the group's part of the weight sync (weights exported)
        step = trainer.step
        if step >= 1 and chaos.sync_kill_due(step):
            chaos.kill_during(lambda: sync(*args), delay_s=chaos.rng.uniform(0.0, 0.05))
        else:
            sync(*args)

    if group.broadcasting:
        group.sync_broadcast = chaotic_sync
    else:
        group.set_weights = chaotic_sync


def tally(expected: list[list[str]], trained: list[list[str]]) -> dict[str, int]:
    """Expected and trained trajectories, step by step: ``duplicates`` counts ids trained
    more than once in their step, ``missing`` expected ids never trained, ``unexpected``
    trained ids never handed out.

    >>> tally([["a#0", "b#0"], ["a#0"]], [["a#0", "b#0"], ["a#0"]])
    {'expected': 3, 'trained': 3, 'duplicates': 0, 'missing': 0, 'unexpected': 0}
    >>> tally([["a#0", "b#0"]], [["a#0", "a#0"]])
    {'expected': 2, 'trained': 2, 'duplicates': 1, 'missing': 1, 'unexpected': 0}
    """
    counts = {"expected": 0, "trained": 0, "duplicates": 0, "missing": 0, "unexpected": 0}
    for step in range(max(len(expected), len(trained))):
        want = Counter(expected[step] if step < len(expected) else [])
        got = Counter(trained[step] if step < len(trained) else [])
        counts["expected"] += sum(want.values())
        counts["trained"] += sum(got.values())
        counts["duplicates"] += sum(c - 1 for c in got.values() if c > 1)
        counts["missing"] += sum(1 for k in want if k not in got)
        counts["unexpected"] += sum(1 for k in got if k not in want)
    return counts


def run(overrides: list[str], steps: int, seed: int) -> dict[str, Any]:
    import ray

    from actors.cluster import init_ray
    from actors.trainer import StePPOTrainer, check_fits
    from launch.config import load_config
    from launch.train import _prepare_inputs

    workdir = Path(tempfile.mkdtemp(prefix="stepsearch-chaos-"))
    cfg = load_config([*BASE, f"trainer.total_steps={steps}", f"trainer.run_dir={workdir / 'run'}",
                       f"data.output_dir={workdir / 'data'}", f"model.build_dir={workdir / 'models'}",
                       *overrides])
    check_fits(cfg, init_ray(cfg.cluster, quiet=True))
    cfg, model_path = _prepare_inputs(cfg)
    if cfg.retrieval.index_dir is None:  # kept, so a restarted replica opens it instead of encoding again
        cfg = replace(cfg, retrieval=replace(cfg.retrieval, index_dir=str(workdir / "index")))
    trainer = StePPOTrainer(cfg, workdir / "run", model_path)
    chaos = Chaos(steps, random.Random(seed))
    expected: list[list[str]] = []
    trained: list[list[str]] = []
    error = None
    timers = []
    try:
        trainer.setup()
        _instrument(trainer, chaos, expected, trained)
        chaos.started = time.monotonic()
        for step in range(1, steps + 1):
            timers += chaos.at_step_start(step)  # not cancelled at the step's end: a moment of the job
            metrics = trainer.train_step()
            chaos.step_time = metrics["time/step_s"]  # the moments of the next step's kills
            print(f"{chaos._t()} step {trainer.step}/{steps}: {metrics['time/step_s']:.1f} s "
                  f"(rollout {metrics['time/rollout_s']:.1f}, sync {metrics['time/sync_s']:.1f}), "
                  f"reward {metrics.get('reward/outcome', 0.0):+.3f}", file=sys.stderr, flush=True)
    except Exception as exc:  # the run failed under chaos: report it, with the counts so far
        error = f"{type(exc).__name__}: {exc}"
        print(f"chaos run failed at step {trainer.step + 1}: {error}", file=sys.stderr)
    finally:
        for timer in timers:
            timer.cancel()
        trainer.shutdown()
        ray.shutdown()
    for line in chaos.log:
        print(line, file=sys.stderr)
    orphans = reap_orphans(chaos.victims_children)
    if orphans:
        print(f"{len(orphans)} processes started by killed actors were still running (killed now): {orphans}",
              file=sys.stderr)
    counts = tally(expected, trained)
    ok = error is None and trainer.step == steps and counts["expected"] == counts["trained"] \
        and counts["duplicates"] == counts["missing"] == counts["unexpected"] == 0
    print(f"missing {counts['missing']}, unexpected {counts['unexpected']}; run dir {workdir}", file=sys.stderr)
    return {"completed": ok, "steps": trainer.step,
            "kills": {k: chaos.kills[k] for k in (*KINDS, "during_sync")},
            "trajectories_expected": counts["expected"], "trajectories_trained": counts["trained"],
            "duplicates": counts["duplicates"]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps (at least 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan and moments")
    args, overrides = parser.parse_known_args(argv)
    if args.steps < 8:
        parser.error("--steps must be at least 8")
    result = run(overrides, args.steps, args.seed)
    print(json.dumps(result))
    return 0 if result["completed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
