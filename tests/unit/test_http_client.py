"""retrieval.backend=http: the client against this project's server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval_service.http import ServerThread, app_for_retriever
from retrieval_service.http_client import HttpRetrieval, RetrievalServerError, parse_document
from retrieval_service.retriever import build_retriever
from workers.config import ConfigError, RetrievalConfig, ServerConfig
from workers.types import Document

FACTS = [("Zorbania", "The capital of Zorbania is Quellin, a port on the northern sea."),
         ("Quellin", "Quellin is a port city founded in 1412 by the merchant Ardo Vess."),
         ("Mirefield", "Mirefield is a market town known for its glassworks and canals."),
         ("Kelvary", "Kelvary is a country whose currency is the silver drem.")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    corpus = tmp_path_factory.mktemp("http_client") / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "contents": f'"{t}"\n{x}'}) + "\n"
                              for i, (t, x) in enumerate(FACTS)))
    cfg = RetrievalConfig(corpus_path=str(corpus), method="bm25", topk=2, max_batch_size=8)
    retriever = build_retriever(cfg, device="cpu")
    with ServerThread(app_for_retriever(retriever, cfg, ServerConfig(max_queries=3))) as thread:
        yield thread


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_search_batches_queries_under_the_servers_limit_and_keeps_their_order(server: ServerThread) -> None:
    client = HttpRetrieval(f"{server.url}/retrieve", max_batch_size=3, default_topk=1)
    queries = ["Kelvary currency", "Mirefield glassworks", "capital of Zorbania", "Quellin founded", "drem"]
    results = client.search(queries)  # 5 queries: 2 requests, the server takes at most 3 a request
    assert [[d.id for d in docs] for docs in results] == [["d3"], ["d2"], ["d0"], ["d1"], ["d3"]]
    top = results[2][0]
    assert (top.title, top.text) == ("Zorbania", FACTS[0][1]) and top.score > 0
    assert [len(docs) for docs in client.search(["Quellin"], topk=2)] == [2]
    assert client.wait_ready() == [{"backend": "http", "url": f"{server.url}/retrieve"}]


def test_a_4xx_answer_is_not_retried(server: ServerThread) -> None:
    client = HttpRetrieval(f"{server.url}/retrieve", max_batch_size=8, retries=3)
    started = time.monotonic()
    with pytest.raises(RetrievalServerError, match="HTTP 4"):
        client.search(["a", "b", "c", "d"])  # over the server's max_queries=3
    assert time.monotonic() - started < 0.5  # no backoff waits


def test_an_unreachable_server_is_retried_with_backoff_then_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retrieval_service.http_client.BACKOFF_S", 0.05)
    client = HttpRetrieval(f"http://127.0.0.1:{_free_port()}/retrieve", timeout_s=1.0, retries=2)
    started = time.monotonic()
    with pytest.raises(RetrievalServerError, match="after 3 attempt"):
        client.search(["x"])
    assert time.monotonic() - started >= 0.05 + 0.1  # waited 0.05 then 0.1 s between the 3 attempts
    with pytest.raises(ConfigError) as info:
        client.wait_ready()
    assert info.value.field_name == "retrieval.url" and "cannot be reached" in str(info.value)


def test_documents_parse_with_or_without_scores() -> None:
    assert parse_document({"document": {"id": "7", "contents": '"Title"\nSome text.'}, "score": 0.5},
                          "q0") == Document("7", "Title", "Some text.", 0.5)
    assert parse_document({"id": 8, "contents": '"T"\nx'}, "q1") == Document("8", "T", "x", 0.0)
    with pytest.raises(RetrievalServerError, match="q2"):
        parse_document({"document": {"id": "1"}}, "q2")
    with pytest.raises(ConfigError, match=r"retrieval\.url"):
        HttpRetrieval.from_config(RetrievalConfig(backend="http"))


def test_the_client_pickles_for_rollout_actors(server: ServerThread) -> None:
    import pickle

    client = pickle.loads(pickle.dumps(HttpRetrieval(f"{server.url}/retrieve")))
    assert client.search(["Mirefield"], topk=1)[0][0].id == "d2"


def test_launch_train_stops_before_training_when_the_server_is_unreachable(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "launch.train", "retrieval.backend=http",
                          f"retrieval.url=http://127.0.0.1:{_free_port()}/retrieve", f"trainer.run_dir={tmp_path}/r"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "config error: retrieval.url: the retrieval server cannot be reached" in out.stderr
    assert list(ray_tmp.iterdir()) == []  # no Ray cluster started
