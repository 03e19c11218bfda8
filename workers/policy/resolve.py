"""Turning ``ModelConfig`` into a model directory: a given path, or the tiny policy built
from the prepared dataset (its tokenizer is trained on the corpus and questions)."""

from __future__ import annotations

import logging
from pathlib import Path

from workers.config import ModelConfig
from workers.data.corpus import read_corpus_jsonl
from workers.data.prompt import SEARCH_INSTRUCTION
from workers.data.rows import SPLITS, read_rows
from workers.policy.tiny import TAG_TOKENS, ensure_tiny_policy

logger = logging.getLogger(__name__)


def policy_texts(data_dir: str | Path, row_format: str = "parquet") -> list[str]:
    """Texts the tiny tokenizer is trained on: passages, prompts and the protocol's tags."""
    data_dir = Path(data_dir)
    texts = [p.contents for p in read_corpus_jsonl(data_dir / "corpus.jsonl")]
    for split in SPLITS:
        path = data_dir / f"{split}.{row_format}"
        if path.exists():
            for row in read_rows(path):
                texts.append(row.prompt[-1]["content"])
                texts.extend(row.ground_truth.target)
    texts.append(SEARCH_INSTRUCTION + " ".join(TAG_TOKENS))
    return texts


def resolve_policy_path(cfg: ModelConfig, data_dir: str | Path, row_format: str = "parquet") -> str:
    """``cfg.path`` (a directory or hub name) when set, else the cached tiny policy for ``data_dir``."""
    if cfg.path:
        return cfg.path
    corpus = Path(data_dir) / "corpus.jsonl"
    if not corpus.exists():
        raise FileNotFoundError(
            f"{corpus} not found: the tiny policy's tokenizer is trained on the prepared data; "
            "run `python -m launch.prepare_data` first")
    return str(ensure_tiny_policy(cfg.tiny, policy_texts(data_dir, row_format), cfg.build_dir))
