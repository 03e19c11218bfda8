"""The Ray-free retriever: ``search(queries, topk) -> list[list[Document]]`` (DESIGN.md 4).

Runs in the retrieval actor (``actors/retrieval.py``), in the HTTP server
(``launch.serve_retrieval``), in benchmarks and tests; CPU or GPU. ``build_retriever`` opens
an index directory (checking its manifest against the config) or builds one first: into
``cfg.index_dir`` when that is set but empty, else into a temporary directory that
is deleted as soon as the index is open (its files stay memory-mapped), so nothing is left on
disk even when the process is killed.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval_service.corpus import CorpusStore
from retrieval_service.index import (
    MANIFEST_FILE,
    IndexMismatchError,
    Manifest,
    build_index,
    check_manifest,
    load_faiss,
)
from workers.config import ConfigError, RetrievalConfig
from workers.types import Document

logger = logging.getLogger(__name__)


class SearchInputError(ValueError):
    """A bad search request; ``status_code`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


def check_search_args(queries: Any, topk: Any, num_passages: int, max_batch_size: int | None = None,
                      max_query_chars: int | None = None) -> None:
    """Validate a search call; raise ``SearchInputError`` naming what is wrong."""
    if not isinstance(queries, (list, tuple)):
        raise SearchInputError(f"queries must be a list of strings, got {type(queries).__name__}")
    if max_batch_size is not None and len(queries) > max_batch_size:
        raise SearchInputError(f"too many queries: {len(queries)} > {max_batch_size} per request", 413)
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise SearchInputError(f"queries[{i}] must be a string, got {type(query).__name__}")
        if not query.strip():
            raise SearchInputError(f"queries[{i}] is empty or whitespace")
        if max_query_chars is not None and len(query) > max_query_chars:
            raise SearchInputError(f"queries[{i}] has {len(query)} characters > {max_query_chars}", 413)
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)):
        raise SearchInputError(f"topk must be an integer, got {type(topk).__name__}")
    if not 1 <= topk <= num_passages:
        raise SearchInputError(f"topk must be between 1 and the corpus size {num_passages}, got {topk}")


class Retriever:
    """Top-k passages for batches of queries; subclasses supply ``_search_rows``."""

    method = ""

    def __init__(self, corpus: CorpusStore, manifest: Manifest) -> None:
        self.corpus = corpus
        self.manifest = manifest

    @property
    def num_passages(self) -> int:
        return len(self.corpus)

    def search(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
        """For each query its ``topk`` best passages, best first (fewer only from approximate
        indexes that find fewer). Raises ``SearchInputError`` on bad arguments."""
        check_search_args(queries, topk, self.num_passages)
        if not queries:
            return []
        rows, scores = self._search_rows(list(queries), int(topk))  # (Q, k), (Q, k)
        keep = rows >= 0  # FAISS pads with -1 when an approximate index finds fewer than k
        docs = self.corpus.documents(rows[keep].tolist(), scores[keep].tolist())
        out, start = [], 0
        for count in keep.sum(axis=1).tolist():
            out.append(docs[start:start + count])
            start += count
        return out

    def _search_rows(self, queries: list[str], topk: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """What the retriever serves (for health endpoints and logs)."""
        m = self.manifest
        return {"method": m.method, "num_passages": self.num_passages, "encoder": m.encoder,
                "index_type": m.index_type, "corpus_sha256": m.corpus_sha256}


class DenseRetriever(Retriever):
    """Encoder + FAISS inner-product index."""

    method = "dense"

    def __init__(self, corpus: CorpusStore, manifest: Manifest, encoder: Any, index: Any) -> None:
        super().__init__(corpus, manifest)
        self.encoder = encoder
        self.index = index

    def _search_rows(self, queries: list[str], topk: int) -> tuple[np.ndarray, np.ndarray]:
        embeddings = self.encoder.encode_queries(queries)  # (Q, dim), L2-normalized
        scores, rows = self.index.search(embeddings, topk)
        return rows.astype(np.int64), scores.astype(np.float32)


class BM25Retriever(Retriever):
    """bm25s over the same corpus store."""

    method = "bm25"

    def __init__(self, corpus: CorpusStore, manifest: Manifest, index: Any) -> None:
        super().__init__(corpus, manifest)
        self.index = index

    def _search_rows(self, queries: list[str], topk: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = self.index.search(queries, topk)
        return rows, scores


def open_retriever(cfg: RetrievalConfig, index_dir: str | Path, device: str = "auto",
                   encoder: Any = None, verify_corpus: bool = True) -> Retriever:
    """Load a built index directory; refuse it (``IndexMismatchError``) if it does not match
    ``cfg`` (and, with ``verify_corpus``, if ``cfg.corpus_path`` is not the indexed corpus)."""
    from retrieval_service.encoders import DenseEncoder, resolve_device

    manifest = Manifest.load(index_dir)
    check_manifest(manifest, cfg, index_dir, cfg.corpus_path if verify_corpus else None)
    corpus = CorpusStore(index_dir)
    if len(corpus) != manifest.num_passages:
        raise IndexMismatchError(f"refusing the index in {index_dir}: corpus store has {len(corpus)} "
                                 f"passages, manifest says {manifest.num_passages}; rebuild it")
    if cfg.method == "bm25":
        from retrieval_service.sparse import BM25Index

        return BM25Retriever(corpus, manifest, BM25Index(index_dir))
    device = resolve_device(device)
    encoder = encoder or DenseEncoder.from_config(cfg, device)
    if encoder.dim != manifest.dim:
        raise IndexMismatchError(f"refusing the index in {index_dir}: encoder {cfg.encoder} gives "
                                 f"dimension {encoder.dim}, the index has {manifest.dim}")
    index = load_faiss(index_dir, manifest, cfg, device)
    return DenseRetriever(corpus, manifest, encoder, index)


def build_retriever(cfg: RetrievalConfig, device: str = "auto", progress: bool = False) -> Retriever:
    """The retriever ``cfg`` describes: its ``index_dir`` if built there, else built first."""
    index_dir = Path(cfg.index_dir) if cfg.index_dir else None
    if index_dir is not None and (index_dir / MANIFEST_FILE).is_file():
        return open_retriever(cfg, index_dir, device)
    if not cfg.corpus_path:
        raise ConfigError("retrieval.corpus_path",
                          f"no index in {index_dir} and no corpus to build one from" if index_dir
                          else "set retrieval.corpus_path (or retrieval.index_dir of a built index)")
    temporary = index_dir is None
    if index_dir is None:
        index_dir = Path(tempfile.mkdtemp(prefix="stepsearch-index-"))
    logger.info("building a %s index of %s in %s", cfg.method, cfg.corpus_path, index_dir)
    try:
        encoder = None
        if cfg.method == "dense":
            from retrieval_service.encoders import DenseEncoder, resolve_device

            device = resolve_device(device)
            encoder = DenseEncoder.from_config(cfg, device)
        build_index(cfg, cfg.corpus_path, index_dir, device, progress=progress, encoder=encoder)
        return open_retriever(cfg, index_dir, device, encoder=encoder, verify_corpus=False)
    finally:
        if temporary:
            # POSIX: the opened files stay mapped after unlinking, so a killed process leaks nothing.
            shutil.rmtree(index_dir, ignore_errors=True)
