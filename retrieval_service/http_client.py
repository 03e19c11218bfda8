"""A client of a Search-R1-compatible retrieval server (``retrieval.backend=http``).

Runs wherever search is called: in the driver (the start check) and, pickled inside
``search``, in every rollout actor. It speaks the API of ``retrieval_service.http`` (this
project's ``launch.serve_retrieval``), which is Search-R1's: ``POST {"queries", "topk",
"return_scores": true}`` -> ``{"result": [[{"document": {"id", "contents"}, "score"}]]}``.
Queries go in batches of at most ``retrieval.max_batch_size``; each request has a timeout
(``retrieval.http_timeout_s``) and is retried with exponential backoff
(``retrieval.http_retries``) after a connection error, a timeout or a 5xx/429 answer; a
4xx answer is the caller's mistake and is not retried. Standard library only.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from workers.config import ConfigError, RetrievalConfig
from workers.types import Document

logger = logging.getLogger(__name__)

BACKOFF_S = 0.5
"""First wait before a retry; doubled after each further failure."""


class RetrievalServerError(RuntimeError):
    """The retrieval server could not answer a request (after the retries, or with a 4xx)."""


def parse_document(item: Any, where: str) -> Document:
    """One result entry, ``{"document": {"id", "contents"}, "score"}`` or a bare document;
    ``contents`` is ``"Title"\\ntext`` (wiki-18's form)."""
    doc = item.get("document", item) if isinstance(item, dict) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("contents"), str):
        raise RetrievalServerError(f"{where}: expected a document with 'contents', got {str(item)[:200]!r}")
    title, _, text = doc["contents"].partition("\n")
    score = item.get("score", 0.0) if isinstance(item, dict) else 0.0
    return Document(id=str(doc.get("id", "")), title=title.strip().strip('"'), text=text,
                    score=float(score if isinstance(score, (int, float)) else 0.0))


class HttpRetrieval:
    """``search(queries, topk)`` over HTTP; picklable, so rollout actors receive it as is."""

    num_replicas = 0
    """No retrieval actors: the server is outside the job."""

    def __init__(self, url: str, *, timeout_s: float = 30.0, retries: int = 3, max_batch_size: int = 256,
                 default_topk: int = 3) -> None:
        self.url, self.timeout_s, self.retries = url, timeout_s, retries
        self.max_batch_size, self.default_topk = max(1, max_batch_size), default_topk

    @classmethod
    def from_config(cls, cfg: RetrievalConfig) -> HttpRetrieval:
        """The client of ``retrieval.url`` with the config's timeout, retries and batch size."""
        if not cfg.url:
            raise ConfigError("retrieval.url", "retrieval.backend=http needs the server's endpoint, "
                                               "e.g. retrieval.url=http://127.0.0.1:8000/retrieve")
        return cls(cfg.url, timeout_s=cfg.http_timeout_s, retries=cfg.http_retries,
                   max_batch_size=cfg.max_batch_size, default_topk=cfg.topk)

    def _post(self, body: dict[str, Any], retries: int) -> Any:
        data = json.dumps(body).encode("utf-8")
        delay = BACKOFF_S
        for attempt in range(retries + 1):
            request = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                if exc.code < 500 and exc.code != 429:
                    raise RetrievalServerError(f"{self.url} refused the request: HTTP {exc.code} {detail}") from exc
                error: Exception = exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as exc:
                error = exc
            if attempt == retries:
                raise RetrievalServerError(f"{self.url} did not answer after {retries + 1} attempt(s) "
                                           f"(timeout {self.timeout_s:g} s): {error}") from error
            logger.warning("retrieval server %s: %s; retrying in %.1f s", self.url, error, delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def search(self, queries: Sequence[str], topk: int | None = None) -> list[list[Document]]:
        """Top-k documents per query, in order, in requests of at most ``max_batch_size`` queries."""
        k = self.default_topk if topk is None else topk
        out: list[list[Document]] = []
        for start in range(0, len(queries), self.max_batch_size):
            batch = list(queries[start:start + self.max_batch_size])
            answer = self._post({"queries": batch, "topk": k, "return_scores": True}, self.retries)
            result = answer.get("result") if isinstance(answer, dict) else None
            if not isinstance(result, list) or len(result) != len(batch):
                raise RetrievalServerError(f"{self.url}: expected 'result' with {len(batch)} lists, "
                                           f"got {str(answer)[:200]!r}")
            out += [[parse_document(item, f"{self.url} query {start + i}") for item in docs]
                    for i, docs in enumerate(result)]
        return out

    def wait_ready(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """One small search, once (no retries): a server that cannot be reached at the start
        stops the job with ``ConfigError`` naming ``retrieval.url``."""
        try:
            self._post({"queries": ["health check"], "topk": 1, "return_scores": True}, retries=0)
        except RetrievalServerError as exc:
            raise ConfigError("retrieval.url", f"the retrieval server cannot be reached ({exc}); start it "
                                               "(python -m launch.serve_retrieval ...) or fix the URL") from None
        return [{"backend": "http", "url": self.url}]

    def callers(self) -> list[dict[str, int]]:
        """No replicas to count calls on."""
        return []

    def shutdown(self) -> None:
        """The server is not the job's: nothing to stop."""
