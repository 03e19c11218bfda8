"""Shared fixtures: paths to the real data samples, and one local Ray cluster per session."""

from __future__ import annotations

import os

# Before anything imports ray or vllm: local clusters and engines bind to 127.0.0.1 (DESIGN.md 5).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA} (only in the project's workspace)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict]:
    """A local Ray cluster bound to loopback, shared by the integration tests of a session."""
    import ray

    from actors.cluster import init_ray
    from workers.config import ClusterConfig

    resources = init_ray(ClusterConfig(num_cpus=4, loopback=True), logging_level="WARNING")
    yield resources
    ray.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests skip on machines without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
