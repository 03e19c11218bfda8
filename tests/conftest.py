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


@pytest.fixture(scope="session")
def small_toyworld(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small prepared toyworld and a 2-layer tiny policy built for it (shared by a session)."""
    from launch.prepare_data import prepare
    from workers.config import DataConfig, TinyModelConfig, ToyWorldConfig
    from workers.data.rows import read_rows
    from workers.policy import ensure_tiny_policy, policy_texts

    out = tmp_path_factory.mktemp("toy")
    world = ToyWorldConfig(num_people=60, num_films=20, num_companies=15, num_universities=10,
                           num_cities=30, num_countries=10, num_questions=60)
    prepare(DataConfig(name="toyworld", output_dir=str(out), toyworld=world))
    policy = ensure_tiny_policy(TinyModelConfig(vocab_size=800, num_layers=2), policy_texts(out), out / "models")
    return {"dir": out, "policy": policy, "rows": read_rows(out / "train.parquet")}
