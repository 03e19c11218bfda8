"""The HTTP retrieval server under abuse: per-request limits, a full queue, hidden 500s, tokens."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from retrieval_service.batching import BatchingSearcher
from retrieval_service.http import ApiLimits, ServerThread, app_for_retriever, create_app, resolve_auth_token
from retrieval_service.retriever import Retriever, build_retriever
from workers.config import ConfigError, RetrievalConfig, ServerConfig
from workers.types import Document

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30
TITLES = ["Zorbania", "Quellin", "Ardo Vess", "Mirefield", "Hollin Pictures", "Kelvary"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("limits") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "contents": f'"{t}"\n{t} is a place in a story.'}) + "\n"
                            for i, t in enumerate(TITLES)))
    return path


@pytest.fixture(scope="module")
def bm25(corpus: Path) -> Retriever:
    return build_retriever(RetrievalConfig(method="bm25", corpus_path=str(corpus)))


@pytest.fixture(scope="module")
def url(bm25: Retriever) -> Iterator[str]:
    server = ServerConfig(max_topk=3, max_queries=5, max_query_chars=20)
    with ServerThread(app_for_retriever(bm25, RetrievalConfig(method="bm25", topk=2), server)) as thread:
        yield thread.url


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"queries": ["Kelvary"], "topk": 4}, 422, r"topk 4 is larger than 3 \(server.max_topk\)"),
    ({"queries": ["q"] * 6}, 413, r"too many queries: 6 > 5 per request \(server.max_queries\)"),
    ({"queries": ["ok", "y" * 21]}, 413, r"queries\[1\] has 21 characters > 20 \(server.max_query_chars\)"),
])
def test_each_limit_is_a_4xx_naming_it(url: str, body: dict, status: int, message: str) -> None:
    response = requests.post(f"{url}/retrieve", json=body, timeout=TIMEOUT)
    assert response.status_code == status
    assert re.search(message, response.json()["error"])


def test_requests_at_the_limits_are_served(url: str) -> None:
    body = {"queries": ["Kelvary", "Quellin", "Mirefield", "Zorbania", "x" * 20], "topk": 3}
    response = requests.post(f"{url}/retrieve", json=body, timeout=TIMEOUT)
    assert response.status_code == 200 and [len(r) for r in response.json()["result"]] == [3] * 5


class Gated:
    """A search function that blocks until released, or raises an exception with secrets in it."""

    def __init__(self, retriever: Retriever, fail: bool = False) -> None:
        self.retriever, self.fail = retriever, fail
        self.gate, self.entered = threading.Event(), threading.Event()

    def __call__(self, queries: list[str], topk: int) -> list[list[Document]]:
        self.entered.set()
        self.gate.wait(TIMEOUT)
        if self.fail:
            raise RuntimeError("cannot open /secret/index/path.faiss: token=abc123")
        return self.retriever.search(queries, topk)


def test_a_full_queue_is_503_with_retry_after(bm25: Retriever) -> None:
    gated = Gated(bm25)
    searcher = BatchingSearcher(gated, max_wait_ms=0, cache_size=0, max_pending=2)
    limits = ApiLimits(num_passages=bm25.num_passages, default_topk=1, retry_after_s=3)
    with ServerThread(create_app(searcher, limits)) as server:
        post = f"{server.url}/retrieve"
        first: list[requests.Response] = []
        waiting = threading.Thread(target=lambda: first.append(
            requests.post(post, json={"queries": ["Kelvary", "Quellin"]}, timeout=TIMEOUT)))
        waiting.start()
        assert gated.entered.wait(TIMEOUT)  # two queries now wait on the retriever
        busy = requests.post(post, json={"queries": ["Mirefield"]}, timeout=TIMEOUT)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "3"
        assert "server.max_pending" in busy.json()["error"]
        assert requests.get(f"{server.url}/health", timeout=TIMEOUT).status_code == 200
        gated.gate.set()
        waiting.join(TIMEOUT)
        assert first[0].status_code == 200
        assert requests.post(post, json={"queries": ["Mirefield"]}, timeout=TIMEOUT).status_code == 200
    searcher.close()


def test_a_500_hides_the_exception_and_the_log_has_it(bm25: Retriever, caplog: pytest.LogCaptureFixture) -> None:
    gated = Gated(bm25, fail=True)
    gated.gate.set()
    searcher = BatchingSearcher(gated, max_wait_ms=0, cache_size=0)
    limits = ApiLimits(num_passages=bm25.num_passages, default_topk=1)
    with caplog.at_level(logging.ERROR), ServerThread(create_app(searcher, limits)) as server:
        response = requests.post(f"{server.url}/retrieve", json={"queries": ["Kelvary"]}, timeout=TIMEOUT)
    searcher.close()
    assert response.status_code == 500
    error = response.json()["error"]
    assert "secret" not in response.text and "RuntimeError" not in response.text and "abc123" not in response.text
    error_id = error.split("error id ")[1].split(";")[0]
    assert "/secret/index/path.faiss" in caplog.text and error_id in caplog.text


@pytest.mark.parametrize("source", ["env", "file"])
def test_token_from_an_environment_variable_or_a_file(bm25: Retriever, tmp_path: Path, source: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if source == "env":
        monkeypatch.setenv("RETRIEVAL_TEST_TOKEN", "from-env")
        server, token = ServerConfig(auth_token_env="RETRIEVAL_TEST_TOKEN"), "from-env"
    else:
        path = tmp_path / "token"
        path.write_text("  from-file\n")
        path.chmod(0o600)
        server, token = ServerConfig(auth_token_file=str(path)), "from-file"
    app = app_for_retriever(bm25, RetrievalConfig(method="bm25", topk=1), server)
    with ServerThread(app) as thread:
        post, body = f"{thread.url}/retrieve", {"queries": ["Kelvary"]}
        assert requests.post(post, json=body, timeout=TIMEOUT).status_code == 401
        bad = {"Authorization": f"Bearer {token}x"}
        assert requests.post(post, json=body, headers=bad, timeout=TIMEOUT).status_code == 401
        good = {"Authorization": f"Bearer {token}"}
        assert requests.post(post, json=body, headers=good, timeout=TIMEOUT).json()["result"][0][0]["id"] == "d5"
        assert requests.get(f"{thread.url}/health", timeout=TIMEOUT).json()["status"] == "ok"  # stays open
        assert requests.get(f"{thread.url}/metrics", timeout=TIMEOUT).status_code == 401


def test_token_sources_fail_naming_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETRIEVAL_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"server\.auth_token_env: environment variable RETRIEVAL_TEST_TOKEN"):
        resolve_auth_token(ServerConfig(auth_token_env="RETRIEVAL_TEST_TOKEN"))
    with pytest.raises(ConfigError, match=r"server\.auth_token_file: cannot read .*nope"):
        resolve_auth_token(ServerConfig(auth_token_file=str(tmp_path / "nope")))
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ConfigError, match=r"server\.auth_token_file: .*empty is empty"):
        resolve_auth_token(ServerConfig(auth_token_file=str(tmp_path / "empty")))
    assert resolve_auth_token(ServerConfig()) is None
    assert resolve_auth_token(ServerConfig(auth_token="t")) == "t"


def test_config_checks_the_new_server_settings() -> None:
    from workers.config import Config
    from workers.config.checks import validate

    with pytest.raises(ConfigError, match=r"server\.auth_token_file: set only one of"):
        validate(Config(server=ServerConfig(auth_token="a", auth_token_file="f")))
    with pytest.raises(ConfigError, match=r"server\.max_topk: must be > 0"):
        validate(Config(server=ServerConfig(max_topk=0)))
    with pytest.raises(ConfigError, match=r"server\.max_pending: must be >= 0"):
        validate(Config(server=ServerConfig(max_pending=-1)))


def test_serve_retrieval_refuses_a_missing_token_variable_before_building(corpus: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RETRIEVAL_TEST_TOKEN"}
    cmd = [sys.executable, "-m", "launch.serve_retrieval", "retrieval=bm25", f"retrieval.corpus_path={corpus}",
           "server.auth_token_env=RETRIEVAL_TEST_TOKEN"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "server.auth_token_env: environment variable RETRIEVAL_TEST_TOKEN is not set or empty" in done.stderr
