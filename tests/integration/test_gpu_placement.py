"""GPU-only paths of the cluster placement (marker ``gpu``: skipped without CUDA, never run here).

vLLM's sleep mode frees and restores an engine's GPU memory; an engine with tensor
parallel 2 runs its workers in the bundles ``actors.placement`` names. Written against
the installed vLLM's documented API (``LLM.sleep``, ``LLM.wake_up``, the Ray executor with
``VLLM_RAY_BUNDLE_INDICES``); they have not run, as this project has no GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.config import TinyModelConfig
from workers.policy.tiny import build_tiny_policy
from workers.rollout.engines import SamplingSettings, VLLMEngine

pytestmark = [pytest.mark.gpu, pytest.mark.integration]

TEXTS = [f"Person {i} was born in City {i % 7}. <search> Person {i} </search>" for i in range(200)]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_policy(TinyModelConfig(vocab_size=512, num_layers=2), TEXTS, tmp_path_factory.mktemp("p"))


def test_sleep_mode_frees_gpu_memory_and_wakes_to_the_same_greedy_output(policy_dir: Path) -> None:
    import torch

    engine = VLLMEngine(str(policy_dir), gpu_memory_utilization=0.3, sleep_level=1, max_model_len=256)
    settings = SamplingSettings(max_tokens=8, temperature=0.0)
    prompt = [engine.tokenizer.encode("Person 3 was born in")]
    before = engine.generate(prompt, settings)[0].token_ids
    used = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
    engine.sleep()
    assert engine.asleep
    freed = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]
    assert freed < used  # the KV cache and the weights left the GPU
    engine.wake_up()
    assert engine.generate(prompt, settings)[0].token_ids == before


def test_a_tensor_parallel_engine_spans_its_planned_bundles(policy_dir: Path) -> None:
    import ray
    import torch

    from actors.placement import JobPlacement, locate
    from launch.config import load_config
    from workers.plan import ClusterShape, check_plan

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    ray.init(num_gpus=2, include_dashboard=False)
    try:
        cfg = load_config(["+experiment=stepsearch_3b", "cluster=local", "model=tiny", f"model.path={policy_dir}",
                           "learner.num_ranks=2", "rollout.num_workers=1", "rollout.tensor_parallel_size=2",
                           "retrieval.replicas=fixed", "retrieval.num_cpus=1", "learner.num_cpus_per_rank=1",
                           "rollout.num_cpus_per_worker=1"])
        shape = ClusterShape.from_ray_nodes(ray.nodes(), None)
        placement = JobPlacement(check_plan(cfg, shape))
        assert placement.engine_env(0) == {"VLLM_RAY_BUNDLE_INDICES": "0,1", "VLLM_RAY_PER_WORKER_GPUS": "0.5"}
        engine_cls = ray.remote(VLLMEngine)
        actor = engine_cls.options(**placement.options("rollout", 0),
                                   runtime_env={"env_vars": placement.engine_env(0)}).remote(
            str(policy_dir), tensor_parallel_size=2, gpu_memory_utilization=0.2, max_model_len=256)
        assert ray.get(actor.__ray_call__.remote(lambda self: self.num_weight_workers)) == 2
        assert locate([actor])[0]["bundle"] == 0
        placement.remove()
    finally:
        ray.shutdown()
