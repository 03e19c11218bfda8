"""launch.train refuses a job whose plan does not fit before any Ray process starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.placement import assigned_bundle, local_shape, preflight
from launch.config import load_config
from workers.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_a_plan_that_does_not_fit_exits_2_before_a_ray_cluster_starts(tmp_path: Path) -> None:
    ray_tmp = tmp_path / "ray"  # a local Ray cluster would write its session here
    ray_tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "launch.train", "+experiment=stepsearch_7b", "cluster=local",
                          "cluster.num_gpus=4", "cluster.num_cpus=64", "cluster.gpu_memory_gib=24",
                          f"trainer.run_dir={tmp_path / 'run'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "config error: learner.num_ranks: the job needs 8 GPU" in out.stderr
    assert list(ray_tmp.iterdir()) == []


def test_preflight_uses_the_local_cluster_it_would_start() -> None:
    cfg = load_config(["+experiment=stepsearch_3b", "cluster=local", "cluster.num_gpus=8", "cluster.num_cpus=64",
                       "cluster.gpu_memory_gib=80"])
    shape = local_shape(cfg.cluster)
    assert shape is not None and (len(shape.nodes), shape.gpus, shape.nodes[0].cpus) == (1, 8.0, 64.0)
    plan = preflight(cfg)
    assert plan is not None and plan.summary()["peak_gpu_memory_gib"] == pytest.approx(61.2, abs=0.05)
    small = load_config(["+experiment=stepsearch_3b", "cluster=local", "cluster.num_gpus=8", "cluster.num_cpus=64",
                         "cluster.gpu_memory_gib=24"])
    with pytest.raises(ConfigError, match="per GPU"):
        preflight(small)
    assert preflight(load_config(["cluster.address=auto"])) is None  # joining a cluster: checked once connected


def test_assigned_bundle_reads_the_bundle_index_from_ray_resource_names() -> None:
    pg = "c0ffee" * 4
    assert assigned_bundle({"CPU_group_3_" + pg: 1.0, "CPU_group_" + pg: 1.0, "GPU_group_3_" + pg: 0.5}) == 3
    assert assigned_bundle({"CPU": 1.0, "GPU": 0.5}) is None
