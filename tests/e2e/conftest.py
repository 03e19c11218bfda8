"""Fixtures of the e2e tier: a prepared toyworld, a cluster token, and a Ray head on loopback.

Session-scoped: the toyworld and its tiny policy are built once, and one head serves every
job submission test (``tests/e2e/support.py`` says how it is started and stopped).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import ROOT, WORLD, RayHead, base_env, start_head, stop_head

BUILD_POLICY = """
import sys
from launch.config import load_config
from workers.policy import resolve_policy_path
cfg = load_config(sys.argv[1:])
resolve_policy_path(cfg.model, cfg.data.output_dir, cfg.data.format)
"""


@pytest.fixture(scope="session")
def toyworld(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides pointing at a toyworld and tiny policy prepared once for the session."""
    root = tmp_path_factory.mktemp("e2e_toyworld")
    overrides = ["trainer=tiny", f"data.output_dir={root / 'data'}", f"model.build_dir={root / 'models'}"]
    subprocess.run([sys.executable, "-m", "launch.prepare_data", *overrides, *WORLD], cwd=ROOT, env=base_env(),
                   check=True, capture_output=True, timeout=300)
    # The policy is built here (as launch.train would), so that no job spends its time on it.
    subprocess.run([sys.executable, "-c", BUILD_POLICY, *overrides], cwd=ROOT, env=base_env(), check=True,
                   capture_output=True, timeout=300)
    return overrides


@pytest.fixture(scope="session")
def ray_token(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cluster token in a private file (``RAY_AUTH_TOKEN_PATH``)."""
    path = tmp_path_factory.mktemp("e2e_auth") / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def ray_head(ray_token: Path) -> Iterator[RayHead]:
    """A ``ray start --head`` of this session only, on loopback with token auth; stopped by pid."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp"))  # short: Ray's unix socket paths are limited
    head = start_head(temp_dir, ray_token)
    try:
        yield head
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
