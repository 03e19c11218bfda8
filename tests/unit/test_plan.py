"""launch.plan and workers.plan: memory math by hand, the placement table, the two expected
expected verdicts (3B fits 1 x 8 x 80 GiB; 7B on 1 x 4 x 24 GiB is refused), the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.config import load_config
from workers.config import ConfigError
from workers.plan import ClusterShape, check_plan, make_plan
from workers.plan.memory import estimate, learner_states, learner_working_set
from workers.plan.shapes import GIB, QWEN2_5, ModelShape, model_shape

ROOT = Path(__file__).resolve().parents[2]
ONE_NODE = ClusterShape.uniform(1, 8, 64, 80.0)


def test_parameter_counts_match_the_published_qwen_sizes() -> None:
    # 3B: V h = 151936 x 2048 = 311,164,928 (tied); a layer: q 2048^2 + 2048 = 4,196,352,
    # k and v 2048 x 256 + 256 = 524,544 each, o 4,194,304, MLP 3 x 2048 x 11008 = 67,633,152,
    # norms 4,096 -> 77,076,992; x 36 + embedding + final norm 2,048.
    assert QWEN2_5["qwen2.5-3b"].params == 36 * 77_076_992 + 311_164_928 + 2048 == 3_085_938_688
    # 7B: untied, so the LM head adds V h = 152064 x 3584 = 544,997,376 a second time.
    assert QWEN2_5["qwen2.5-7b"].params == 28 * 233_057_792 + 2 * 544_997_376 + 3584 == 7_615_616_512
    assert QWEN2_5["qwen2.5-7b"].critic_params == 7_615_616_512 - 544_997_376 + 3584 + 1
    small = ModelShape(1000, 64, 2, 1, 1, 128, tied_embeddings=True)
    assert small.layer_params == 4160 * 3 + 4096 + 3 * 64 * 128 + 128 == 41_280
    assert small.params == 64_000 + 2 * 41_280 + 64


def test_model_shape_comes_from_the_tiny_config_a_config_json_or_a_hub_name(tmp_path: Path) -> None:
    cfg = load_config()
    assert model_shape(cfg.model).hidden_size == 256
    (tmp_path / "config.json").write_text(json.dumps({
        "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 16, "tie_word_embeddings": True}))
    local = load_config([f"model.path={tmp_path}"]).model
    assert model_shape(local) == ModelShape(10, 8, 1, 2, 1, 16, tied_embeddings=True)
    assert model_shape(load_config(["model=qwen2.5-7b"]).model) == QWEN2_5["qwen2.5-7b"]
    with pytest.raises(ConfigError, match=r"model\.path"):
        model_shape(load_config(["model.path=org/unknown-model"]).model)


def test_learner_states_follow_the_zero_stage_and_offload() -> None:
    n = QWEN2_5["qwen2.5-3b"].params
    cfg = load_config(["+experiment=stepsearch_3b"])  # ZeRO-3 over 8, bf16: 2 + 2 + 12 B a parameter
    terms = {t.name: t.gib for t in learner_states(cfg, QWEN2_5["qwen2.5-3b"])}
    assert terms["policy weights"] == pytest.approx(771_484_672 / GIB)  # 2 x 3,085,938,688 / 8
    assert terms["policy gradients"] == pytest.approx(771_484_672 / GIB)
    assert terms["policy optimizer"] == pytest.approx(4_628_908_032 / GIB)  # 12 x N / 8
    assert terms["reference weights"] == pytest.approx(771_484_672 / GIB)
    zero2 = load_config(["+experiment=stepsearch_3b", "learner.zero_stage=2", "learner.offload_optimizer=true"])
    terms = {t.name: t.gib for t in learner_states(zero2, QWEN2_5["qwen2.5-3b"])}
    assert terms["policy weights"] == pytest.approx(2 * n / GIB)  # not sharded below stage 3
    assert terms["policy gradients"] == terms["policy optimizer"] == 0.0  # on the CPU


def test_activations_and_logits_by_hand() -> None:
    cfg = load_config(["+experiment=stepsearch_3b"])  # m = 2, S = 4096 + 4096, checkpointing on
    terms = {t.name: t.gib for t in learner_working_set(cfg, QWEN2_5["qwen2.5-3b"])}
    # one layer per token: 2 B x (6 x 2048 + 2 x 2 x 128 + 4 x 11008) = 113,664 B; checkpoints
    # 36 layers x 2 B x 2048 = 147,456 B; 16,384 tokens x 261,120 B.
    assert terms["activations"] == pytest.approx(16_384 * 261_120 / GIB)
    assert terms["logits"] == pytest.approx(16_384 * 151_936 * 10 / GIB)  # bf16 + fp32 + fp32 gradient
    assert terms["ZeRO-3 gathered"] == pytest.approx(2 * 2 * 311_164_928 / GIB)  # the embedding is the largest
    no_ckpt = load_config(["+experiment=stepsearch_3b", "learner.gradient_checkpointing=false"])
    terms = {t.name: t.gib for t in learner_working_set(no_ckpt, QWEN2_5["qwen2.5-3b"])}
    assert terms["activations"] == pytest.approx(16_384 * 36 * 113_664 / GIB)


def test_kv_cache_and_phases_of_the_3b_preset() -> None:
    cfg = load_config(["+experiment=stepsearch_3b"])
    mem = estimate(cfg, QWEN2_5["qwen2.5-3b"], 80.0)
    # 2 (K, V) x 36 layers x ceil(2 kv heads / tp 4) = 1 head x 128 x 2 B = 18,432 B a token
    # on each GPU; 128 prompts over 2 engines = 64 sequences of 8,192 tokens.
    assert mem.kv_needed_gib == pytest.approx(64 * 8192 * 18_432 / GIB) == pytest.approx(9.0)
    assert mem.kv_available_gib == pytest.approx(0.6 * 80 - 2 * 3_085_938_688 / 4 / GIB - 1.0)
    states = sum(t.gib for t in learner_states(cfg, QWEN2_5["qwen2.5-3b"]))
    work = sum(t.gib for t in learner_working_set(cfg, QWEN2_5["qwen2.5-3b"]))
    assert mem.phases["rollout"] == pytest.approx(48.0 + states + 1.0)  # engines awake, learner resident
    assert mem.phases["learn"] == pytest.approx(1.0 + states + work + 1.0)  # engines asleep (sleep_level 1)
    awake = estimate(load_config(["+experiment=stepsearch_3b", "rollout.sleep_level=0"]), QWEN2_5["qwen2.5-3b"], 80.0)
    assert awake.phases["learn"] == pytest.approx(mem.phases["learn"] + 47.0)


def test_colocated_placement_shares_bundles() -> None:
    plan = make_plan(load_config(["+experiment=stepsearch_3b"]), ONE_NODE)
    p = plan.placement
    (group,) = p.groups
    assert [(b.node, b.gpus, b.cpus) for b in group.bundles] == [(0, 1.0, 6.0)] * 8  # learner 4 + engine 2 CPUs
    assert [a.bundles for a in p.of("rollout")] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [a.bundles for a in p.of("learner")] == [(i,) for i in range(8)]
    assert {a.gpus_per_bundle for a in p.of("rollout") + p.of("learner")} == {0.5}
    assert [(a.node, a.bundles) for a in p.of("retrieval")] == [(0, ())] and not p.of("critic")


def test_two_nodes_of_four_gpus_put_one_engine_and_one_retrieval_replica_on_each() -> None:
    # a node's CPUs: 4 bundles x 6 + its retrieval replica 8 (+ 1 for the reward actor on node 0)
    plan = make_plan(load_config(["+experiment=stepsearch_3b"]), ClusterShape.uniform(2, 4, 40, 80.0))
    p = plan.placement
    assert plan.fits and [a.node for a in p.of("rollout")] == [0, 1]
    assert [a.node for a in p.of("learner")] == [0] * 4 + [1] * 4
    assert [a.node for a in p.of("retrieval")] == [0, 1]
    three = make_plan(load_config(["+experiment=stepsearch_3b"]), ClusterShape.uniform(3, 3, 32, 80.0))
    assert three.field_name == "rollout.tensor_parallel_size"  # an engine would span two nodes


def test_separate_placement_gives_each_role_its_own_gpus() -> None:
    cfg = load_config(["+experiment=stepsearch_3b", "cluster.placement=separate", "rollout.sleep_level=0",
                       "learner.colocate_critic=false", "learner.num_gpus_per_rank=1"])
    plan = make_plan(cfg, ClusterShape.uniform(3, 8, 64, 80.0))
    p = plan.placement
    assert plan.gpus == 2 * 4 + 2 * 8  # two engines of 4 GPUs, 8 policy and 8 critic ranks
    assert [a.node for a in p.of("learner")] == [0] * 8 and [a.node for a in p.of("critic")] == [1] * 8
    assert [a.node for a in p.of("rollout")] == [2, 2]
    assert make_plan(cfg, ONE_NODE).field_name == "rollout.num_gpus_per_worker"


def test_the_expected_verdicts_of_issue_21() -> None:
    fits = check_plan(load_config(["+experiment=stepsearch_3b"]), ONE_NODE)
    assert fits.fits and fits.summary()["peak_gpu_memory_gib"] == pytest.approx(61.2, abs=0.05)
    seven = load_config(["+experiment=stepsearch_7b"])
    assert check_plan(seven, ONE_NODE).fits
    small = ClusterShape.uniform(1, 4, 64, 24.0)
    with pytest.raises(ConfigError) as info:
        check_plan(seven, small)
    assert info.value.field_name == "learner.num_ranks"
    shrunk = load_config(["+experiment=stepsearch_7b", "learner.num_ranks=4", "rollout.num_workers=1"])
    plan = make_plan(shrunk, small)  # fits the 4 GPUs, not their memory: ZeRO-3 states alone are 58 GiB
    assert not plan.fits and plan.field_name == "learner.offload_optimizer"
    assert make_plan(load_config(["+experiment=stepsearch_7b", "rollout.gpu_memory_utilization=0.6"]),
                     ONE_NODE).field_name == "rollout.gpu_memory_utilization"  # 78 GiB > 90% of 80


def test_the_tiny_cpu_job_needs_four_cpus_and_no_memory_check() -> None:
    cfg = load_config()
    plan = make_plan(cfg, ClusterShape.uniform(1, 0, 4, None))
    assert plan.fits and plan.memory is None and len(plan.placement.actors) == 4
    assert make_plan(cfg, ClusterShape.uniform(1, 0, 3, None)).field_name == "rollout.num_workers"


def test_cluster_shape_from_ray_nodes_keeps_alive_nodes_gpu_nodes_first() -> None:
    nodes = [{"NodeID": "head", "Alive": True, "Resources": {"CPU": 8.0}},
             {"NodeID": "dead", "Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}},
             {"NodeID": "gpu", "Alive": True, "Resources": {"CPU": 32.0, "GPU": 4.0}}]
    shape = ClusterShape.from_ray_nodes(nodes, 80.0)
    assert [(n.gpus, n.cpus, n.node_id) for n in shape.nodes] == [(4.0, 32.0, "gpu"), (0.0, 8.0, "head")]
    assert shape.gpus == 4.0


def _plan_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "launch.plan", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_the_table_and_ends_with_the_verdict() -> None:
    ok = _plan_cli("+experiment=stepsearch_3b", "plan.nodes=1", "plan.gpus_per_node=8", "plan.gpu_memory_gib=80")
    assert ok.returncode == 0, ok.stderr
    last = json.loads(ok.stdout.strip().splitlines()[-1])
    assert last == {"fits": True, "nodes": 1, "gpus": 8.0, "peak_gpu_memory_gib": 61.2, "reason": ""}
    assert "rollout        2  4 x 0.5" in ok.stdout and "KV cache of the batch" in ok.stdout
    refused = _plan_cli("+experiment=stepsearch_7b", "plan.gpus_per_node=4", "plan.gpu_memory_gib=24")
    assert refused.returncode == 2
    verdict = json.loads(refused.stdout.strip().splitlines()[-1])
    assert verdict["fits"] is False and "learner.num_ranks" in verdict["reason"]
    bad = _plan_cli("plan.nodes=0")
    assert bad.returncode == 2 and "plan.nodes" in bad.stderr


def test_the_rehearsal_shrink_of_the_3b_preset_places_on_two_simulated_nodes() -> None:
    # Issue 21's rehearsal: the preset with the tiny model and toyworld, on 2 nodes x 4 declared GPUs.
    cfg = load_config(["+experiment=stepsearch_3b", "model=tiny", "data=toyworld", "retrieval=minilm_flat"])
    assert (cfg.cluster.placement, cfg.retrieval.replicas, cfg.rollout.tensor_parallel_size) == ("colocated",
                                                                                             "per_node", 4)
    plan = check_plan(cfg, ClusterShape.uniform(2, 4, 40, None))  # declared GPUs: resources only
    assert plan.memory is None and [a.node for a in plan.placement.of("retrieval")] == [0, 1]
    short = make_plan(cfg, ClusterShape.uniform(2, 4, 16, None))
    assert short.field_name == "learner.num_cpus_per_rank" and "8 bundles of {GPU: 1, CPU: 6}" in short.reason


def test_an_http_retrieval_backend_starts_no_retrieval_actors() -> None:
    from workers.plan import format_plan

    cfg = load_config(["+experiment=stepsearch_3b", "retrieval.backend=http",
                       "retrieval.url=http://127.0.0.1:8000/retrieve"])
    plan = make_plan(cfg, ONE_NODE)
    assert plan.fits and not plan.placement.of("retrieval")
    assert "the server at http://127.0.0.1:8000/retrieve" in format_plan(cfg, plan)


def test_the_readme_paper_command_is_refused_for_its_retrieval_gpu() -> None:
    # retrieval=e5_gpu asks for a GPU beside the 8 shared bundles: the plan names that setting.
    cfg = load_config(["model=qwen2.5-3b", "data=musique", "retrieval=e5_gpu", "rollout=gpu", "learner=zero3_gpu",
                       "trainer=paper", "cluster=gpu_node"])
    plan = make_plan(cfg, ONE_NODE)
    assert plan.field_name == "retrieval.num_gpus" and plan.gpus == 9
    assert make_plan(load_config(["+experiment=stepsearch_3b", "retrieval.num_gpus=1"]),
                     ONE_NODE).field_name == "retrieval.num_gpus"
