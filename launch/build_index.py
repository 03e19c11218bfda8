"""Build a retrieval index directory: ``python -m launch.build_index retrieval.corpus_path=FILE
retrieval.index_dir=DIR [retrieval=e5_gpu | retrieval=bm25 | retrieval.index_type=hnsw ...]``.

Runs in the user's process, on CPU or the visible GPUs (``device=cuda``): parses the corpus
(bad lines are reported with their numbers before any encoding), encodes every passage
with a progress bar, and writes the index, the memory-mapped corpus store and
``manifest.json`` (written last) into ``retrieval.index_dir``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from launch.cli import run_tool
from retrieval_service.corpus import CorpusError
from workers.config import Config, ConfigError, RetrievalConfig

logger = logging.getLogger(__name__)
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise

USAGE = """usage: python -m launch.build_index retrieval.corpus_path=FILE retrieval.index_dir=DIR [overrides]

Builds the index the retrieval config describes (retrieval.method, encoder, pooling, prefixes,
index_type) for a JSONL corpus ({"id","contents"} or {"id","title","text"} per line).
Examples:
  python -m launch.build_index retrieval.corpus_path=data/toyworld/corpus.jsonl retrieval.index_dir=indexes/toy
  python -m launch.build_index retrieval=e5_gpu device=cuda retrieval.corpus_path=wiki-18.jsonl \\
      retrieval.index_dir=indexes/wiki18-e5-flat"""


def retrieval_config(cfg: Config) -> RetrievalConfig:
    """``cfg.retrieval``, with the prepared data's corpus as the default corpus when neither a
    corpus nor an index directory is given (RetrievalConfig.corpus_path's documented default)."""
    rcfg = cfg.retrieval
    if rcfg.corpus_path is None and rcfg.index_dir is None:
        rcfg = dataclasses.replace(rcfg, corpus_path=str(Path(cfg.data.output_dir) / "corpus.jsonl"))
    if rcfg.corpus_path is not None and not Path(rcfg.corpus_path).is_file():
        raise ConfigError("retrieval.corpus_path", f"no such file: {rcfg.corpus_path}")
    return rcfg


def main(cfg: Config) -> int:
    """Build the index; exit 1 with the line-numbered problems when the corpus is bad."""
    from retrieval_service.index import build_index

    rcfg = retrieval_config(cfg)
    if not rcfg.index_dir:
        raise ConfigError("retrieval.index_dir", "say where to write the index: retrieval.index_dir=DIR")
    if not rcfg.corpus_path:
        raise ConfigError("retrieval.corpus_path", "say which corpus to index: retrieval.corpus_path=FILE")
    try:
        manifest = build_index(rcfg, rcfg.corpus_path, rcfg.index_dir, device=cfg.device, progress=True)
    except CorpusError as exc:
        print(f"corpus error: {exc}", file=sys.stderr)
        return 1
    what = f"{manifest.encoder} dim {manifest.dim}, {manifest.index_type}" if manifest.method == "dense" else "bm25"
    print(f"index of {manifest.num_passages} passages ({what}) written to {rcfg.index_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, usage=USAGE))
