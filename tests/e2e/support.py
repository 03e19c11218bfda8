"""Helpers of the e2e tier: the tiny job's overrides, environments, and a Ray head on loopback.

Runs in the test process. The head is a real ``ray start --head`` in its own ``--temp-dir``
with every port chosen free, started with ``--block`` in its own session. Stopping it never
uses ``ray stop``, which stops every Ray process on the machine (other users' clusters
included): ``stop_head`` snapshots the process tree under our ``ray start`` process, sends
that process SIGTERM (with ``--block`` it then shuts its node down cleanly) and kills by
pid whatever of the snapshot is still alive after a grace period.

Token authentication stays on (DESIGN.md 5) without touching ``~/.ray/auth_token``: the
head, the clients and the jobs read a token from a private file through
``RAY_AUTH_TOKEN_PATH``, with ``RAY_AUTH_MODE=token`` set for all of them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil  # a dependency of ray[default]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
"""The project's environment: its ``python`` and ``ray`` (not resolved: a venv's python is a symlink)."""

WORLD = ["data.toyworld.num_questions=200", "data.toyworld.num_people=80", "data.toyworld.num_films=30",
         "data.toyworld.num_companies=20"]
"""A small toyworld: prepared in seconds, enough rows for a 2-step run."""
TINY = ["trainer.total_steps=2", "trainer.batch_size=4", "learner.mini_batch_size=4", "learner.micro_batch_size=2",
        "trainer.eval_size=4", "rollout.max_action_tokens=32", "rollout.max_response_tokens=256"]
"""The tiny training job (the project's smoke run)."""
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1"}
"""Local clusters, their workers and vLLM on 127.0.0.1 (DESIGN.md 5)."""
INHERITED_RAY_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                      "RAY_AUTH_TOKEN_PATH")
"""Variables from the caller's shell that would point the tests at another cluster or token."""
LOOPBACK_IPS = {"127.0.0.1", "::ffff:127.0.0.1"}
HEAD_NUM_CPUS = 5
"""Scheduling slots: retrieval, reward, learner and up to two rollout workers (DESIGN.md 5: not cores)."""
START_TIMEOUT_S = 120.0


def base_env(token_path: Path | None = None) -> dict[str, str]:
    """The caller's environment minus its Ray addresses/tokens, plus loopback and (optionally) the token."""
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_RAY_VARS}
    env.update(LOOPBACK)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `python` is the project's, as in an activated venv
    if token_path is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    return env


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@dataclass(frozen=True)
class RayHead:
    """A running head: its dashboard URL, the env a client needs, its ``ray start`` process."""

    dashboard_url: str
    client_env: dict[str, str]
    proc: subprocess.Popen
    temp_dir: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_head(temp_dir: Path, token_path: Path) -> RayHead:
    """``ray start --head --block`` on loopback with token auth; returns once its job API answers."""
    (gcs, dashboard, client, agent_http, agent_grpc, runtime_env_agent, metrics, node_manager,
     object_manager) = free_ports(9)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={runtime_env_agent}", f"--metrics-export-port={metrics}",
           f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
           f"--num-cpus={HEAD_NUM_CPUS}", "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    env = base_env(token_path)
    log = temp_dir / "ray_start.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=temp_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    head = RayHead(f"http://127.0.0.1:{dashboard}", env, proc, temp_dir, log)
    try:
        _wait_until_ready(head, token_path.read_text())
    except BaseException:
        stop_head(head)
        raise
    return head


def _wait_until_ready(head: RayHead, token: str) -> None:
    """Until the job API answers an authenticated request (the dashboard and its job agent are up)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    request = urllib.request.Request(f"{head.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    while True:
        if head.proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.proc.returncode}:\n{head.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the head did not answer within {START_TIMEOUT_S:.0f} s:\n"
                               f"{head.log.read_text()[-3000:]}")
        time.sleep(1.0)


def stop_head(head: RayHead, grace_s: float = 30.0) -> None:
    """SIGTERM to our ``ray start --block``, then SIGKILL by pid to what is left of its tree."""
    try:
        root = psutil.Process(head.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        head.proc.wait()
        return
    head.proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for p in alive:  # psutil checks each pid's start time, so a reused pid is never hit
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    head.proc.wait(timeout=10)


def listening_addresses(pid: int) -> set[str]:
    """Local IPs on which the process ``pid`` and its descendants listen (TCP)."""
    root = psutil.Process(pid)
    out: set[str] = set()
    for p in [root, *root.children(recursive=True)]:
        try:
            conns = p.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out.update(c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN)
    return out
