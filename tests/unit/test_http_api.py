"""The HTTP API on a real server on 127.0.0.1, called the way Search-R1's client calls it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from retrieval_service.batching import BATCH_SIZE_MAX, BatchingSearcher
from retrieval_service.http import ApiLimits, ServerThread, app_for_retriever, create_app
from retrieval_service.retriever import Retriever, build_retriever
from workers.config import RetrievalConfig, ServerConfig

ROOT = Path(__file__).resolve().parents[2]
FACTS = [("Zorbania", "The capital of Zorbania is Quellin, a port on the northern sea."),
         ("Quellin", "Quellin is a port city founded in 1412 by the merchant Ardo Vess."),
         ("Ardo Vess", "Ardo Vess was a merchant who studied at the University of Lantry."),
         ("Mirefield", "Mirefield is a market town known for its glassworks and canals."),
         ("Hollin Pictures", "Hollin Pictures is a film studio headquartered in Bexmoor."),
         ("Kelvary", "Kelvary is a country whose currency is the silver drem.")]
TIMEOUT = 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("http") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "contents": f'"{t}"\n{x}'}) + "\n"
                            for i, (t, x) in enumerate(FACTS)))
    return path


@pytest.fixture(scope="module")
def retriever(corpus: Path) -> Retriever:
    return build_retriever(RetrievalConfig(corpus_path=str(corpus)), device="cpu")


@pytest.fixture(scope="module")
def url(retriever: Retriever) -> Iterator[str]:
    cfg = RetrievalConfig(topk=2, max_batch_size=8, max_batch_wait_ms=20)
    with ServerThread(app_for_retriever(retriever, cfg, ServerConfig(max_queries=8))) as server:
        yield server.url


def test_search_r1_client_call(url: str) -> None:
    payload = {"queries": ["capital of Zorbania", "currency of Kelvary"], "topk": 3, "return_scores": True}
    result = requests.post(f"{url}/retrieve", json=payload, timeout=TIMEOUT).json()["result"]
    assert len(result) == 2 and all(len(docs) == 3 for docs in result)
    item = result[0][0]
    assert set(item) == {"document", "score"} and set(item["document"]) == {"id", "contents"}
    content = item["document"]["contents"]  # how Search-R1 turns a hit into its prompt text
    title, text = content.split("\n")[0], "\n".join(content.split("\n")[1:])
    assert (item["document"]["id"], title, text) == ("d0", '"Zorbania"', FACTS[0][1])
    assert result[1][0]["document"]["id"] == "d5"
    scores = [d["score"] for d in result[0]]
    assert scores == sorted(scores, reverse=True) and isinstance(scores[0], float)


def test_documents_only_and_default_topk(url: str) -> None:
    body = requests.post(f"{url}/retrieve", json={"queries": ["Hollin Pictures"], "topk": None,
                                                  "return_scores": False}, timeout=TIMEOUT).json()
    docs = body["result"][0]
    assert len(docs) == 2 and set(docs[0]) == {"id", "contents"}  # server default topk=2
    assert docs[0]["contents"].startswith('"Hollin Pictures"\n')
    plain = requests.post(f"{url}/retrieve", json={"queries": ["Hollin Pictures"]}, timeout=TIMEOUT).json()
    assert plain == body  # return_scores defaults to false, as in Search-R1's server


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"queries": []}, 422, "queries is empty"),
    ({"queries": ["ok", "  "]}, 422, r"queries\[1\] is empty or whitespace"),
    ({"queries": ["ok", 7]}, 422, r"queries\[1\] must be a string"),
    ({"queries": "just a string"}, 422, "must be a list of strings"),
    ({"topk": 3}, 422, "missing field 'queries'"),
    ({"queries": ["ok"], "topk": 0}, 422, "between 1 and the corpus size 6"),
    ({"queries": ["ok"], "topk": -2}, 422, "between 1 and the corpus size"),
    ({"queries": ["ok"], "topk": 7}, 422, "between 1 and the corpus size 6, got 7"),
    ({"queries": ["ok"], "topk": "3"}, 422, "topk must be an integer"),
    ({"queries": ["ok"], "return_scores": "yes"}, 422, "return_scores must be true or false"),
    ({"queries": ["ok"] * 9}, 413, r"too many queries: 9 > 8 per request \(server.max_queries\)"),
    ({"queries": ["x" * 5000]}, 413, r"5000 characters > 2000 \(server.max_query_chars\)"),
    ([1, 2], 422, "body must be a JSON object")])
def test_bad_input_is_4xx_and_server_stays_up(url: str, body: object, status: int, message: str) -> None:
    response = requests.post(f"{url}/retrieve", json=body, timeout=TIMEOUT)
    assert response.status_code == status
    assert re.search(message, response.json()["error"])
    assert requests.get(f"{url}/health", timeout=TIMEOUT).json()["status"] == "ok"


def test_malformed_json_is_400(url: str) -> None:
    for raw in (b"{not json", b"", b"\xff\xfe"):
        response = requests.post(f"{url}/retrieve", data=raw, timeout=TIMEOUT,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


def test_concurrent_clients_are_served_together(url: str) -> None:
    queries = [f"{title} facts" for title, _ in FACTS] * 3
    barrier, statuses = threading.Barrier(len(queries)), []

    def client(q: str) -> None:
        barrier.wait()
        statuses.append(requests.post(f"{url}/retrieve", json={"queries": [q], "topk": 1}, timeout=TIMEOUT)
                        .status_code)

    threads = [threading.Thread(target=client, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * len(queries)
    assert requests.get(f"{url}/metrics", timeout=TIMEOUT).json()[BATCH_SIZE_MAX] > 1  # coalesced


def test_bearer_token_and_body_limit(retriever: Retriever) -> None:
    searcher = BatchingSearcher(retriever.search, max_wait_ms=1, cache_size=0)
    limits = ApiLimits(num_passages=retriever.num_passages, default_topk=1, max_queries=4, max_query_chars=50)
    with ServerThread(create_app(searcher, limits, auth_token="s3cret")) as server:
        post = f"{server.url}/retrieve"
        body = {"queries": ["Mirefield"]}
        assert requests.post(post, json=body, timeout=TIMEOUT).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert requests.post(post, json=body, headers=wrong, timeout=TIMEOUT).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        answer = requests.post(post, json=body, headers=ok, timeout=TIMEOUT).json()
        assert answer["result"][0][0]["id"] == "d3"
        huge = requests.post(post, data=b"[" + b'"a",' * 100_000 + b'"a"]', headers=ok, timeout=TIMEOUT)
        assert huge.status_code == 413
        assert requests.get(f"{server.url}/metrics", timeout=TIMEOUT).status_code == 401


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_retrieval_cli_builds_and_serves(corpus: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "launch.serve_retrieval", "retrieval=bm25", f"retrieval.corpus_path={corpus}",
           f"server.port={port}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        assert health == {"status": "ok", "num_passages": 6, "method": "bm25", "encoder": None, "index_type": None}
        payload = {"queries": ["silver drem currency"], "topk": 1, "return_scores": True}
        result = requests.post(f"http://127.0.0.1:{port}/retrieve", json=payload, timeout=TIMEOUT).json()["result"]
        assert result[0][0]["document"]["id"] == "d5"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit by SIGINT).
    assert proc.returncode in (0, -signal.SIGINT)
