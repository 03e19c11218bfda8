"""The tiny CPU policy: a small Qwen2 with seeded random weights and a locally trained tokenizer.

Runs in the driver (or ``launch.build_policy``) before any actor starts; the result is a
normal Hugging Face directory that transformers and vLLM load. Nothing is downloaded.
Same config, same texts: same bytes (the build is cached under a content hash).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from workers.config import TinyModelConfig

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|endoftext|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
TAG_TOKENS = ("<think>", "</think>", "<search>", "</search>", "<information>", "</information>",
              "<answer>", "</answer>")
"""Protocol tags: single tokens in the tiny vocabulary, so stops and spans are exact."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, the format Qwen2 models use, so real and tiny policies share one code path."""

_FORMAT_VERSION = 1  # bump when the build changes, so cached builds are not reused


def build_key(cfg: TinyModelConfig, texts: Sequence[str]) -> str:
    """Content hash of everything that determines the built directory's bytes."""
    h = hashlib.sha256(json.dumps({"cfg": asdict(cfg), "v": _FORMAT_VERSION}, sort_keys=True).encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def train_tokenizer(texts: Iterable[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer with the chat and protocol tags as single tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS_TOKEN, *CHAT_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(TAG_TOKENS), special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # Tags are added as normal (non-special) tokens: decoding keeps them in the text.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token="<|im_end|>",
                                   pad_token=BOS_TOKEN, unk_token=None,
                                   additional_special_tokens=list(CHAT_TOKENS))
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_policy(cfg: TinyModelConfig, texts: Sequence[str], out_dir: str | Path) -> Path:
    """Train the tokenizer on ``texts``, build the seeded model and save both to ``out_dir``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    vocab = len(tokenizer)
    padded_vocab = (vocab + 63) // 64 * 64  # aligned embedding rows; extra rows are never sampled
    options: dict[str, Any] = dict(
        vocab_size=padded_vocab, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32", initializer_range=0.02,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    config = Qwen2Config(**options)
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("built tiny policy: %d parameters, vocab %d -> %s", n_params, vocab, out_dir)
    return out_dir


def ensure_tiny_policy(cfg: TinyModelConfig, texts: Sequence[str], build_dir: str | Path) -> Path:
    """The cached build for ``(cfg, texts)``, built atomically on first use."""
    target = Path(build_dir).expanduser() / f"tiny-{build_key(cfg, texts)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        build_tiny_policy(cfg, texts, tmp)
        try:
            os.replace(tmp, target)  # atomic: a concurrent builder's copy wins, same bytes
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
