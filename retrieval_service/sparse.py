"""Sparse BM25 retrieval with ``bm25s``: build, save, memory-mapped load, search.

Runs in the retrieval actor / HTTP server and in ``launch.build_index``, on CPU. Passages
and queries go through one tokenizer defined here (lower-case, words of 2+ characters,
English stopwords dropped), so the index and the queries always agree.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BM25_DIR = "bm25"
"""Sub-directory of an index directory holding the bm25s arrays."""

_WORD = re.compile(r"(?u)\b\w\w+\b")


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(texts: Iterable[str], stopwords: frozenset[str]) -> list[list[str]]:
    """Lower-cased word tokens without stopwords, one list per text."""
    return [[w for w in _WORD.findall(t.lower()) if w not in stopwords] for t in texts]


def build_bm25(passages: Iterable[list[str]], index_dir: str | Path) -> None:
    """Index batches of passage texts (``CorpusStore.iter_contents``) into ``index_dir/bm25``."""
    import bm25s

    stopwords = _stopwords()
    tokens: list[list[str]] = []
    for batch in passages:
        tokens.extend(tokenize(batch, stopwords))
    model = bm25s.BM25()
    model.index(tokens, show_progress=False)
    model.save(str(Path(index_dir) / BM25_DIR), show_progress=False)
    logger.info("bm25: %d passages, %d terms", len(tokens), len(model.vocab_dict))


class BM25Index:
    """A saved bm25s index, memory-mapped, answering ``search(queries, topk)`` with rows."""

    def __init__(self, index_dir: str | Path) -> None:
        import bm25s

        path = Path(index_dir) / BM25_DIR
        if not path.is_dir():
            raise FileNotFoundError(f"no BM25 index at {path}")
        self._model: Any = bm25s.BM25.load(str(path), mmap=True, show_progress=False)
        self._vocab = self._model.vocab_dict
        self._stopwords = _stopwords()

    def search(self, queries: Sequence[str], topk: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``(Q, topk)`` int64 and scores ``(Q, topk)`` float32, best first."""
        # Unknown words can't score; the empty token would match passages made of stopwords.
        tokens = [[w for w in q if w in self._vocab and w] for q in tokenize(queries, self._stopwords)]
        rows, scores = self._model.retrieve(tokens, k=topk, show_progress=False, n_threads=0)
        return np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float32)
