"""The tiny policy: deterministic bytes, protocol tags as single tokens, loads in transformers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from workers.config import TinyModelConfig
from workers.policy.tiny import TAG_TOKENS, build_tiny_policy, ensure_tiny_policy

TEXTS = [f"Person {i} was born in City {i % 7} and directed The Film {i}. Question: who?" for i in range(200)]
CFG = TinyModelConfig(vocab_size=400, num_layers=1, intermediate_size=256)


def _digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_policy(CFG, TEXTS, tmp_path_factory.mktemp("policy"))


def test_same_seed_same_bytes_other_seed_other_weights(policy_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_policy(CFG, TEXTS, tmp_path / "again")
    assert _digests(again) == _digests(policy_dir)
    other = build_tiny_policy(TinyModelConfig(**{**CFG.__dict__, "seed": 1}), TEXTS, tmp_path / "other")
    assert _digests(other)["model.safetensors"] != _digests(policy_dir)["model.safetensors"]
    assert _digests(other)["tokenizer.json"] == _digests(policy_dir)["tokenizer.json"]


def test_loads_in_transformers_with_tags_as_single_tokens(policy_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.hidden_size // model.config.num_attention_heads == 64
    for tag in TAG_TOKENS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1, tag
    text = "<think> who </think><search> Person 3 born </search>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    out = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, len(ids) + 5)
    assert len(tok) <= model.config.vocab_size


def test_ensure_builds_once_and_reuses(tmp_path: Path) -> None:
    first = ensure_tiny_policy(CFG, TEXTS, tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_policy(CFG, TEXTS, tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert ensure_tiny_policy(CFG, [*TEXTS, "more text"], tmp_path) != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiny-")]  # no leftovers
