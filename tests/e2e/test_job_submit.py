"""``launch.submit`` against a real ``ray start --head`` on loopback with token auth (issue 7).

The tiny training job is submitted twice to the same head, with one and with two rollout
workers, and must succeed with both: metrics for both steps, a summary, and as many
``RolloutActor``s in the job as asked for (read back from Ray's state API).
"""

from __future__ import annotations

import json
import math
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.support import BIN, LOOPBACK_IPS, ROOT, TINY, RayHead, free_ports, listening_addresses

pytestmark = pytest.mark.e2e

JOB_TIMEOUT_S = 900
STEP_KEYS = ("reward/outcome", "reward/answer_f1", "ppo/policy_loss", "ppo/value_loss", "ppo/kl_ref",
             "rollout/tokens_per_s", "time/step_s")


def _submit(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.submit", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _ray_list(head: RayHead, what: str, *filters: str) -> list[dict]:
    args = [str(BIN / "ray"), "list", what, "--address", head.dashboard_url, "--format", "json", "--limit", "1000"]
    for f in filters:
        args += ["--filter", f]
    out = subprocess.run(args, env=head.client_env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_the_head_listens_on_loopback_only(ray_head: RayHead) -> None:
    addresses = listening_addresses(ray_head.pid)
    assert addresses, "found no listening sockets of the head"
    assert addresses <= LOOPBACK_IPS, f"the head listens beyond loopback: {sorted(addresses)}"


def test_a_client_without_token_mode_is_told_to_set_it(ray_head: RayHead) -> None:
    env = {k: v for k, v in ray_head.client_env.items() if k != "RAY_AUTH_MODE"}
    result = _submit(["--address", ray_head.dashboard_url, "--status", "raysubmit_none"], env)
    assert result.returncode == 1
    assert "RAY_AUTH_MODE=token" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_an_unreachable_address_is_reported(ray_head: RayHead) -> None:
    (port,) = free_ports(1)
    result = _submit(["--address", f"http://127.0.0.1:{port}", "--status", "raysubmit_none"], ray_head.client_env)
    assert result.returncode == 1
    assert "cannot reach the Ray dashboard" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_status_of_an_unknown_job_is_an_error(ray_head: RayHead) -> None:
    result = _submit(["--address", ray_head.dashboard_url, "--status", "raysubmit_none"], ray_head.client_env)
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_job_submitted_without_waiting_can_be_stopped(ray_head: RayHead, toyworld: list[str],
                                                        tmp_path: Path) -> None:
    url, env = ray_head.dashboard_url, ray_head.client_env
    submission_id = f"e2e-stop-{secrets.token_hex(4)}"
    result = _submit(["--address", url, "--working-dir", str(ROOT), "--submission-id", submission_id, "--no-wait",
                      "--", *TINY, *toyworld, f"trainer.run_dir={tmp_path / 'run'}"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"submitted {submission_id}" in result.stdout

    # Stop it once it runs: a stop while Ray still sets up the job's environment (PENDING)
    # can leave the entrypoint to start afterwards, unsupervised, holding cluster resources.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = _submit(["--address", url, "--status", submission_id], env)
        if f"{submission_id}: RUNNING" in status.stdout:
            break
        time.sleep(1.0)
    result = _submit(["--address", url, "--stop", submission_id], env)
    assert result.returncode == 0 and f"{submission_id}: stop requested" in result.stdout, result.stdout
    deadline = time.monotonic() + 120
    while True:
        result = _submit(["--address", url, "--status", submission_id], env)
        assert result.returncode == 0, result.stderr[-3000:]
        if f"{submission_id}: STOPPED" in result.stdout or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert f"{submission_id}: STOPPED" in result.stdout


@pytest.mark.parametrize("num_workers", [1, 2])
def test_the_tiny_training_job_succeeds(ray_head: RayHead, toyworld: list[str], tmp_path: Path,
                                        num_workers: int) -> None:
    run_dir = tmp_path / "run"
    submission_id = f"e2e-train-w{num_workers}-{secrets.token_hex(4)}"
    result = _submit(["--address", ray_head.dashboard_url, "--working-dir", str(ROOT),
                      "--submission-id", submission_id, "--",
                      *TINY, *toyworld, f"trainer.run_dir={run_dir}", f"rollout.num_workers={num_workers}"],
                     ray_head.client_env, timeout=JOB_TIMEOUT_S)
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-5000:]
    assert f"{submission_id}: SUCCEEDED" in result.stdout
    assert "step 2/2" in result.stdout, "the job's logs were not followed"

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [row["step"] for row in rows] == [0, 1, 2]  # step 0: the starting policy's validation
    assert "eval/em" in rows[0]
    rows = rows[1:]
    for row in rows:
        for key in STEP_KEYS:
            assert key in row and math.isfinite(row[key]), (row["step"], key)
    assert "eval/f1" in rows[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["checkpoint"]

    (job,) = _ray_list(ray_head, "jobs", f"submission_id={submission_id}")
    actors = _ray_list(ray_head, "actors", f"job_id={job['job_id']}", "class_name=RolloutActor")
    assert len(actors) == num_workers, actors
