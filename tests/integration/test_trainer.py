"""The StePPO loop on a local Ray cluster: resume after a kill, actor faults, learner failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TINY = ["trainer=tiny", "trainer.batch_size=4", "learner.mini_batch_size=4", "learner.micro_batch_size=2",
        "trainer.eval_size=4",
        "trainer.eval_every=0", "rollout.max_action_tokens=24", "rollout.max_response_tokens=160",
        "rollout.max_obs_tokens=64", "model.tiny.num_layers=2", "learner.actor_lr=1e-3", "learner.critic_lr=1e-3",
        "trainer.tensorboard=false", "data.toyworld.num_questions=200", "data.toyworld.num_people=80",
        "data.toyworld.num_films=30", "data.toyworld.num_companies=20"]


@pytest.fixture(scope="module")
def common(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("trainer")
    return [*TINY, f"data.output_dir={root / 'data'}", f"model.build_dir={root / 'models'}"]


def _train(args: list[str], run_dir: Path, kill_after_checkpoint: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1"}
    cmd = [sys.executable, "-m", "launch.train", *args, f"trainer.run_dir={run_dir}"]
    if kill_after_checkpoint is None:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    marker = run_dir / "checkpoints" / f"step_{kill_after_checkpoint:06d}" / "COMPLETE"
    deadline = time.monotonic() + 900
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    out, _ = proc.communicate()
    return subprocess.CompletedProcess(cmd, -9, out, "")


def _policy_weights(checkpoint: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted((checkpoint / "learner" / "hf").glob("*.safetensors"))
    assert files, f"no HF export in {checkpoint}"
    out: dict[str, np.ndarray] = {}
    for f in files:
        out.update(load_file(f))
    return out


def test_killed_and_resumed_run_ends_where_an_uninterrupted_run_ends(common: list[str], tmp_path: Path) -> None:
    args = [*common, "trainer.total_steps=4", "trainer.save_every=2", "rollout.engine=hf", "seed=5"]
    straight = _train(args, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _train(args, tmp_path / "resumed", kill_after_checkpoint=2)
    assert not (tmp_path / "resumed" / "checkpoints" / "step_000004").exists(), killed.stdout[-2000:]
    resumed = _train([*args, "trainer.resume=auto"], tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    printed = resumed.stdout + resumed.stderr
    assert "resumed from" in printed and "step_000002" in printed

    a = _policy_weights(tmp_path / "straight" / "checkpoints" / "step_000004")
    b = _policy_weights(tmp_path / "resumed" / "checkpoints" / "step_000004")
    start = _policy_weights(tmp_path / "straight" / "checkpoints" / "step_000002")
    assert a.keys() == b.keys()
    assert any(not np.array_equal(a[k], start[k]) for k in a)  # training moved the weights
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    steps = [line for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines() if line]
    numbers = [int(s.split('"step": ')[1].split(",")[0]) for s in steps]
    assert numbers[-2:] == [3, 4] and len(numbers) == len(set(numbers)), numbers  # each step once

    # The same run or none: another seed on the command line is refused before any actor starts.
    refused = _train([*args, "trainer.resume=auto", "seed=6"], tmp_path / "resumed")
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "config error: seed:" in refused.stderr and "step_000004" in refused.stderr
    assert "was trained with 5, the command line gives 6" in refused.stderr
    assert "started a local Ray cluster" not in refused.stdout + refused.stderr


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_0(common: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1"}
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.train", *common, "trainer.total_steps=30", "rollout.engine=hf",
           f"trainer.run_dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:  # wait until the loop runs
        seen.append(line)
        if "step 1/30" in line:
            break
    proc.send_signal(signal.SIGTERM)  # what `launch.submit --stop` (Ray's job stop) sends the driver
    out, _ = proc.communicate(timeout=600)
    printed = "".join(seen) + out
    assert proc.returncode == 0, printed[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped"] is True and 1 <= summary["steps"] < 30
    assert Path(summary["checkpoint"]).name == f"step_{summary['steps']:06d}"
    assert (Path(summary["checkpoint"]) / "COMPLETE").exists()
    assert f"trainer.run_dir={run_dir} trainer.resume=auto" in printed


def _pids(class_name: str) -> list[int]:
    """Live actor processes of this session's cluster (Ray titles them ``ray::ClassName``)."""
    import psutil

    procs = psutil.Process().children(recursive=True)
    out = []
    for proc in procs:
        try:
            title = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        # ``ray::Class.method``, or ``ray::NAME:Class.method`` for a named actor
        head = title.split(" ")[0]
        if head.startswith("ray::") and (head[5:].startswith(class_name) or f":{class_name}" in head) \
                and proc.status() != psutil.STATUS_ZOMBIE:
            out.append(proc.pid)
    return out


@pytest.fixture()
def trainer(ray_cluster: dict, common: list[str], tmp_path: Path):
    from actors.trainer import StePPOTrainer
    from launch.config import load_config
    from launch.train import _prepare_inputs

    cfg, model_path = _prepare_inputs(load_config([*common, "trainer.total_steps=3", "rollout.engine=hf"]))
    t = StePPOTrainer(cfg, tmp_path, model_path)
    t.setup()
    yield t
    t.shutdown()


def test_killed_reward_and_retrieval_actors_are_restarted_and_steps_go_on(trainer) -> None:
    first = trainer.train_step()
    reward_pid, retrieval_pid = _pids("RewardActor")[0], _pids("RetrievalActor")[0]
    os.kill(reward_pid, signal.SIGKILL)
    os.kill(retrieval_pid, signal.SIGKILL)
    second = trainer.train_step()
    third = trainer.train_step()
    assert trainer.step == 3
    for metrics in (first, second, third):
        assert {"reward/outcome", "ppo/policy_loss", "time/rollout_s"} <= metrics.keys()
    assert reward_pid not in _pids("RewardActor") and _pids("RewardActor")
    assert trainer.retrieval is not None
    assert trainer.retrieval.search(["anything"], 1)[0]  # the restarted replica answers
    assert retrieval_pid not in _pids("RetrievalActor")


def test_a_dead_learner_rank_fails_the_step_with_a_resume_hint(trainer) -> None:
    from actors.trainer import LearnerFailure

    trainer.train_step()
    os.kill(_pids("LearnerWorker")[0], signal.SIGKILL)
    with pytest.raises(LearnerFailure, match=r"trainer.resume=auto"):
        trainer.train_step()
    # Anywhere else the learner is needed too: the weight sync and the checkpoint.
    with pytest.raises(LearnerFailure, match=r"learner weight export: policy rank 0 failed .*during the weight "
                                             r"sync of version 1; resume with trainer.resume=auto"):
        trainer.sync_weights()
    with pytest.raises(LearnerFailure, match=r"learner checkpoint: .* failed .*during the checkpoint of step 1; "
                                             r"resume with trainer.resume=auto"):
        trainer.checkpoint()


def test_critic_warmup_trains_the_critic_alone_before_step_one(trainer, tmp_path: Path, capsys) -> None:
    from dataclasses import replace

    from launch.train import warm_up_critic
    from workers.tracking import MetricsLogger, read_metrics

    trainer.cfg = replace(trainer.cfg, trainer=replace(trainer.cfg.trainer, critic_warmup_steps=2))
    assert trainer.learner is not None
    policy, critic = trainer.learner.parameters(role="policy"), trainer.learner.parameters(role="critic")
    tracker = MetricsLogger(tmp_path / "log", tensorboard=False)
    warm_up_critic(trainer, tracker)
    tracker.close()
    assert trainer.step == 0
    np.testing.assert_array_equal(trainer.learner.parameters(role="policy"), policy)
    assert not np.allclose(trainer.learner.parameters(role="critic"), critic)
    assert capsys.readouterr().out.count("critic warmup ") == 2
    (record,) = read_metrics(tmp_path / "log" / "metrics.jsonl")
    assert record["step"] == 0 and record["critic_warmup/steps"] == 2
    assert record["critic_warmup/value_loss"] > 0 and "critic_warmup/policy_loss" not in record
    first = trainer.train_step()
    assert trainer.step == 1 and "ppo/policy_loss" in first
    assert not np.allclose(trainer.learner.parameters(role="policy"), policy)
    assert trainer.warmup_critic() == []  # never after step 1 (a resumed run)


def test_keep_checkpoints_keeps_the_newest_n_and_the_best(common: list[str], tmp_path: Path) -> None:
    """trainer.keep_checkpoints=2 with a checkpoint and a validation every step: the newest
    two stay, and the best by validation EM (the first step reaching the highest EM; the tiny
    random policy scores 0 everywhere, so step 1) is kept beside them."""
    from workers.tracking import read_metrics

    run = _train([*common, "trainer.total_steps=4", "trainer.save_every=1", "trainer.eval_every=1",
                  "trainer.keep_checkpoints=2", "trainer.eval_start=false", "rollout.engine=hf"], tmp_path / "run")
    assert run.returncode == 0, run.stderr[-3000:]
    ems = {r["step"]: r["eval/em"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/em" in r}
    assert sorted(ems) == [1, 2, 3, 4]
    best = min(step for step, em in ems.items() if em == max(ems.values()))
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == sorted({f"step_{s:06d}" for s in (best, 3, 4)}), kept


def test_an_in_process_rollout_worker_trains_end_to_end(ray_cluster: dict, common: list[str], tmp_path: Path) -> None:
    """``rollout.num_workers=0``: the driver generates; its batches reach the reward and learner
    actors through the object store like an actor's would."""
    from actors.trainer import StePPOTrainer
    from launch.config import load_config
    from launch.train import _prepare_inputs

    cfg, model_path = _prepare_inputs(load_config([*common, "trainer.total_steps=2", "rollout.engine=hf",
                                                   "rollout.num_workers=0"]))
    trainer = StePPOTrainer(cfg, tmp_path, model_path)
    trainer.setup()
    try:
        assert trainer.rollout_group is not None and trainer.rollout_group.actors == []
        assert trainer.learner is not None
        before = trainer.learner.parameters()
        steps = [trainer.train_step(), trainer.train_step()]
        assert trainer.step == 2 and trainer.rollout_group.version == 2
        for metrics in steps:
            assert {"reward/outcome", "ppo/policy_loss", "rollout/tokens_per_s"} <= metrics.keys(), sorted(metrics)
        assert not np.allclose(trainer.learner.parameters(), before)
        assert trainer.evaluate()["eval/count"] == cfg.trainer.eval_size
    finally:
        trainer.shutdown()


def test_a_rollout_restart_budget_spent_stops_the_job_with_exit_1_and_the_resume_command(
        common: list[str], tmp_path: Path) -> None:
    """rollout.max_restarts=0: the first rollout chunk hangs (the test-only knob), the actor
    is killed at rollout.timeout_s, and that one death is over the budget."""
    from workers.faults import HANG_ENV

    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1",
           HANG_ENV: f"rollout:600:{tmp_path / 'hung'}"}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.train", *common, "trainer.total_steps=2", "rollout.engine=hf",
           "trainer.eval_start=false", "rollout.timeout_s=30", "rollout.max_restarts=0", f"trainer.run_dir={run}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert (tmp_path / "hung").exists()  # the chunk did hang
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    assert "error: " in done.stderr and "rollout.max_restarts" in done.stderr, done.stderr[-3000:]
    assert f"resume with: python -m launch.train trainer.resume=auto trainer.run_dir={run}" in done.stderr
