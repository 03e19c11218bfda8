"""The retrieval HTTP API, compatible with Search-R1 / StepSearch retrieval clients.

Runs in the HTTP server process (``launch.serve_retrieval``), on the uvicorn event loop;
searches go through a ``BatchingSearcher``, so concurrent clients are served concurrently
and coalesced into encoder batches instead of being serialized.

- ``POST /retrieve`` ``{"queries": [...], "topk": k | null, "return_scores": bool}`` ->
  ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}``, or per query a
  list of documents when ``return_scores`` is false; ``contents`` is ``"Title"\\ntext``.
- ``GET /health`` -> ``{"status": "ok", ...}``; ``GET /metrics`` -> the searcher's metrics.

Bad input gets a 4xx JSON ``{"error": message}`` and the server stays up; a request over a
per-request limit (``server.max_queries``, ``server.max_query_chars``, ``server.max_topk``)
gets a 4xx naming the limit; when ``server.max_pending`` queries already wait, 503 with
``Retry-After``. A 500 says only that the search failed (the log has the exception). With an
auth token (``server.auth_token``, ``server.auth_token_env`` or ``server.auth_token_file``),
``/retrieve`` and ``/metrics`` need ``Authorization: Bearer <token>``; ``/health`` stays open.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Imported at module level: FastAPI resolves handler annotations from module globals.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from retrieval_service.batching import BatchingSearcher, SearcherBusyError, SearcherStoppedError
from retrieval_service.retriever import SearchInputError, check_search_args
from workers.config import ConfigError, RetrievalConfig, ServerConfig
from workers.types import Document

if TYPE_CHECKING:
    from retrieval_service.retriever import Retriever

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrieveRequest:
    """A validated ``POST /retrieve`` body."""

    queries: list[str]
    topk: int
    return_scores: bool


@dataclass(frozen=True)
class ApiLimits:
    """What the API accepts: corpus size and ``max_topk`` bound ``topk``; the rest bound a
    request's size. Defaults are ``ServerConfig``'s."""

    num_passages: int
    default_topk: int
    max_queries: int = 4096
    max_query_chars: int = 2000
    max_topk: int = 100
    retry_after_s: int = 1

    @property
    def max_body_bytes(self) -> int:
        # Worst case JSON: every character escaped as \\uXXXX, plus slack for the envelope.
        return 64 * 1024 + self.max_queries * (6 * self.max_query_chars + 8)


def check_limits(queries: Any, topk: Any, limits: ApiLimits) -> None:
    """The server's per-request limits; each error names the ``server.*`` setting."""
    if isinstance(queries, list):
        if len(queries) > limits.max_queries:
            raise SearchInputError(f"too many queries: {len(queries)} > {limits.max_queries} per request "
                                   "(server.max_queries)", 413)
        for i, query in enumerate(queries):
            if isinstance(query, str) and len(query) > limits.max_query_chars:
                raise SearchInputError(f"queries[{i}] has {len(query)} characters > {limits.max_query_chars} "
                                       "(server.max_query_chars)", 413)
    if isinstance(topk, int) and not isinstance(topk, bool) and topk > limits.max_topk:
        raise SearchInputError(f"topk {topk} is larger than {limits.max_topk} (server.max_topk)", 422)


def parse_retrieve_request(body: bytes, limits: ApiLimits) -> RetrieveRequest:
    """Validate a request body; raise ``SearchInputError`` with the 4xx status and message."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SearchInputError(f"body is not valid JSON: {exc}", 400) from None
    if not isinstance(payload, dict):
        raise SearchInputError(f"body must be a JSON object, got {type(payload).__name__}")
    if "queries" not in payload:
        raise SearchInputError("missing field 'queries' (a list of strings)")
    queries = payload["queries"]
    if isinstance(queries, list) and not queries:
        raise SearchInputError("queries is empty: send at least one query")
    topk = payload.get("topk")
    topk = limits.default_topk if topk is None else topk
    check_limits(queries, topk, limits)
    check_search_args(queries, topk, limits.num_passages)
    return_scores = payload.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise SearchInputError(f"return_scores must be true or false, got {return_scores!r}")
    return RetrieveRequest(list(queries), int(topk), return_scores)


def document_json(doc: Document) -> dict[str, str]:
    """The Search-R1 document form: ``{"id", "contents"}``."""
    return {"id": doc.id, "contents": doc.contents}


def format_results(results: list[list[Document]], return_scores: bool) -> dict[str, Any]:
    if return_scores:
        return {"result": [[{"document": document_json(d), "score": d.score} for d in docs]
                           for docs in results]}
    return {"result": [[document_json(d) for d in docs] for docs in results]}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def resolve_auth_token(server: ServerConfig) -> str | None:
    """The bearer token from ``server.auth_token``, ``auth_token_env`` or ``auth_token_file``.

    Raises ``ConfigError`` naming the setting when the variable or file is missing or empty.
    """
    if server.auth_token_env:
        token = os.environ.get(server.auth_token_env, "").strip()
        if not token:
            raise ConfigError("server.auth_token_env",
                              f"environment variable {server.auth_token_env} is not set or empty")
        return token
    if server.auth_token_file:
        path = Path(server.auth_token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError("server.auth_token_file", f"cannot read {path}: {exc.strerror}") from None
        if not token:
            raise ConfigError("server.auth_token_file", f"{path} is empty")
        if path.stat().st_mode & 0o077:
            logger.warning("%s holds the bearer token and is readable by other users (chmod 600 it)", path)
        return token
    return server.auth_token or None


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise SearchInputError(f"request body of {declared} bytes is larger than {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise SearchInputError(f"request body is larger than {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(searcher: BatchingSearcher, limits: ApiLimits, auth_token: str | None = None,
               info: dict[str, Any] | None = None) -> FastAPI:
    """The FastAPI app serving ``searcher`` (``/retrieve``, ``/health``, ``/metrics``)."""
    app = FastAPI(title="StepSearch retrieval", docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {auth_token}".encode() if auth_token else None

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return expected is None or hmac.compare_digest(given, expected)

    @app.post("/retrieve")
    async def retrieve(request: Request) -> JSONResponse:
        if not authorized(request):
            return _error(401, "missing or wrong bearer token")
        try:
            req = parse_retrieve_request(await _read_body(request, limits.max_body_bytes), limits)
            results = await searcher.search(req.queries, req.topk)
        except SearchInputError as exc:
            return _error(exc.status_code, str(exc))
        except (SearcherBusyError, SearcherStoppedError) as exc:  # our own messages: no internals
            retry = {"Retry-After": str(limits.retry_after_s)}
            busy = isinstance(exc, SearcherBusyError)
            return _error(503, str(exc) if busy else "the search worker restarted; retry", retry)
        except Exception:  # the server stays up; details go to the log, not to the client
            error_id = uuid.uuid4().hex[:12]
            logger.exception("retrieve failed (error id %s)", error_id)
            return _error(500, f"retrieval failed (error id {error_id}; the server log has the details)")
        return JSONResponse(format_results(results, req.return_scores))

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", **(info or {})})

    @app.get("/metrics")
    async def metrics(request: Request) -> JSONResponse:
        if not authorized(request):
            return _error(401, "missing or wrong bearer token")
        return JSONResponse(searcher.metrics())

    return app


def app_for_retriever(retriever: Retriever, cfg: RetrievalConfig, server: ServerConfig) -> FastAPI:
    """Wire a retriever into a batching searcher and the app, with limits from the configs."""
    searcher = BatchingSearcher(retriever.search, max_batch_size=cfg.max_batch_size,
                                max_wait_ms=cfg.max_batch_wait_ms, cache_size=cfg.cache_size,
                                cache_max_bytes=cfg.cache_max_bytes, max_pending=server.max_pending)
    limits = ApiLimits(num_passages=retriever.num_passages, default_topk=cfg.topk,
                       max_queries=server.max_queries, max_query_chars=server.max_query_chars,
                       max_topk=server.max_topk)
    info = {"num_passages": retriever.num_passages, "method": retriever.manifest.method,
            "encoder": retriever.manifest.encoder, "index_type": retriever.manifest.index_type}
    return create_app(searcher, limits, resolve_auth_token(server), info)


def _uvicorn_server(app: FastAPI, host: str, port: int) -> Any:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), in this thread."""
    _uvicorn_server(app, host, port).run()


class ServerThread:
    """The app served from a background thread (tests, benchmarks); a context manager."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _uvicorn_server(app, host, port)
        self._thread = threading.Thread(target=self._server.run, name="retrieval-http", daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout: float = 30.0) -> ServerThread:
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the retrieval HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        if self.port == 0:
            self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
