"""Serve retrieval over HTTP: ``python -m launch.serve_retrieval retrieval.index_dir=DIR
[retrieval.corpus_path=FILE] [server.port=8000 server.host=127.0.0.1 server.auth_token_file=F]``.

Runs in the user's process (a GPU node for wiki-18 with e5, or a laptop CPU). Opens the
index directory (refusing one whose manifest does not match the config), or with no
``retrieval.index_dir`` builds an index of ``retrieval.corpus_path`` in a temporary
directory first, then serves ``POST /retrieve`` (Search-R1 compatible), ``GET /health``
and ``GET /metrics`` with uvicorn until Ctrl-C / SIGTERM. Binds to loopback unless
``server.host`` says otherwise. The encoder uses ``retrieval.num_cpus`` threads. The bearer
token is read before anything is built, from ``server.auth_token_env`` (a variable's name) or
``server.auth_token_file``, which keep it off the command line that ``ps`` shows.
"""

from __future__ import annotations

import ipaddress
import logging
import sys

from launch.build_index import retrieval_config
from launch.cli import run_tool
from workers.config import Config

logger = logging.getLogger(__name__)
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise

USAGE = """usage: python -m launch.serve_retrieval retrieval.index_dir=DIR [retrieval.corpus_path=FILE] [overrides]

Serves POST /retrieve {"queries": [...], "topk": k, "return_scores": bool} and GET /health.
With no retrieval.index_dir it builds an index of retrieval.corpus_path first (in memory/tmp).
Server options: server.host=127.0.0.1 server.port=8000
  server.auth_token_env=VAR | server.auth_token_file=FILE | server.auth_token=SECRET (shows in ps)
  server.max_queries=4096 server.max_query_chars=2000 server.max_topk=100 server.max_pending=16384
Examples:
  python -m launch.serve_retrieval retrieval.corpus_path=data/toyworld/corpus.jsonl server.port=8000
  python -m launch.serve_retrieval retrieval=e5_gpu device=cuda retrieval.index_dir=indexes/wiki18-e5-flat"""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _limit_threads(num_cpus: float) -> None:
    """Encoder threads = ``retrieval.num_cpus``, as Ray gives a retrieval actor. torch's default
    (one per core) stalls at OpenMP barriers once other processes share the cores: measured here
    with 16 HTTP clients, 10 req/s with 2 threads vs 224 req/s with 1 (benchmarks/bench_retrieval)."""
    import torch

    threads = max(1, int(num_cpus))
    torch.set_num_threads(threads)
    logger.info("encoder threads: %d (retrieval.num_cpus)", threads)


def main(cfg: Config) -> int:
    """Load or build the retriever and serve it until interrupted."""
    from retrieval_service.corpus import CorpusError
    from retrieval_service.http import app_for_retriever, resolve_auth_token, serve
    from retrieval_service.index import IndexMismatchError, IndexNotFoundError
    from retrieval_service.retriever import build_retriever

    rcfg = retrieval_config(cfg)
    server = cfg.server
    token = resolve_auth_token(server)  # a missing variable or file fails now, not after the build
    if rcfg.method == "dense":
        _limit_threads(rcfg.num_cpus)
    try:
        retriever = build_retriever(rcfg, cfg.device, progress=True)
    except (CorpusError, IndexMismatchError, IndexNotFoundError) as exc:
        print(f"retrieval error: {exc}", file=sys.stderr)
        return 1
    if not _is_loopback(server.host) and not token:
        logger.warning("serving on %s without a bearer token: anyone who can reach it can query it",
                       server.host)
    app = app_for_retriever(retriever, rcfg, server)
    logger.info("serving %d passages (%s) on http://%s:%d/retrieve", retriever.num_passages,
                retriever.manifest.method, server.host, server.port)
    serve(app, server.host, server.port)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, usage=USAGE))
