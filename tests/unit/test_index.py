"""FAISS/BM25 index building, the exactness of Flat, and manifest checks at load time."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval_service.index import (
    FAISS_FILE,
    IndexMismatchError,
    IndexNotFoundError,
    Manifest,
    build_index,
    check_manifest,
    new_faiss_index,
    set_search_params,
)
from retrieval_service.retriever import build_retriever, open_retriever
from workers.config import RetrievalConfig

TOPICS = ["volcano", "violin", "glacier", "pharaoh", "satellite", "orchid", "submarine", "chess",
          "honeybee", "cathedral", "tornado", "saxophone", "penguin", "pyramid", "telescope", "vaccine"]


def write_corpus(path: Path) -> Path:
    rows = [{"id": f"p{i}", "title": t.title(), "text": f"This passage is about the {t}. The {t} is described here."}
            for i, t in enumerate(TOPICS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[RetrievalConfig, Path]:
    root = tmp_path_factory.mktemp("dense")
    cfg = RetrievalConfig(corpus_path=str(write_corpus(root / "corpus.jsonl")), index_dir=str(root / "index"))
    build_index(cfg, cfg.corpus_path, cfg.index_dir, device="cpu", progress=False)
    return cfg, root / "index"


def brute_force(queries: np.ndarray, passages: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ passages.T  # (Q, N)
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, axis=1)


def test_flat_equals_numpy_brute_force_random() -> None:
    passages, queries = unit_vectors(500, 32, 0), unit_vectors(20, 32, 1)
    index, _ = new_faiss_index(32, 500, RetrievalConfig(index_type="flat"))
    index.add(passages)
    scores, rows = index.search(queries, 10)
    want_rows, want_scores = brute_force(queries, passages, 10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)


def test_flat_retriever_equals_numpy_on_its_embeddings(dense_dir: tuple[RetrievalConfig, Path]) -> None:
    cfg, index_dir = dense_dir
    retriever = open_retriever(cfg, index_dir, device="cpu")
    passages = retriever.index.reconstruct_n(0, retriever.num_passages)  # the stored embeddings
    np.testing.assert_allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-5)
    queries = ["a famous violin", "penguins in the cold", "ancient pyramid builders", "looking at stars"]
    want_rows, want_scores = brute_force(retriever.encoder.encode_queries(queries), passages, 5)
    results = retriever.search(queries, 5)
    for docs, rows, scores in zip(results, want_rows, want_scores, strict=True):
        assert [d.id for d in docs] == [f"p{r}" for r in rows]
        np.testing.assert_allclose([d.score for d in docs], scores, rtol=1e-5, atol=1e-6)
    assert [r[0].title for r in results] == ["Violin", "Penguin", "Pyramid", "Telescope"]


@pytest.mark.parametrize("change", [
    {"encoder": "intfloat/e5-base-v2"}, {"pooling": "cls"}, {"passage_prefix": "passage: "},
    {"max_length": 512}, {"index_type": "hnsw"}, {"method": "bm25"}])
def test_manifest_mismatch_refused(dense_dir: tuple[RetrievalConfig, Path], change: dict) -> None:
    cfg, _ = dense_dir
    wrong = dataclasses.replace(cfg, **change)
    field = next(iter(change))
    with pytest.raises(IndexMismatchError, match=rf"retrieval\.{field}: index built with"):
        build_retriever(wrong, device="cpu")  # never silently used, never rebuilt over


def test_other_corpus_refused(dense_dir: tuple[RetrievalConfig, Path], tmp_path: Path) -> None:
    cfg, index_dir = dense_dir
    other = tmp_path / "other.jsonl"
    other.write_text(Path(cfg.corpus_path).read_text().replace("volcano", "volcanoes"))
    manifest = Manifest.load(index_dir)
    check_manifest(manifest, cfg, index_dir, cfg.corpus_path)  # the right corpus passes
    with pytest.raises(IndexMismatchError, match=r"retrieval\.corpus_path: .* is not the corpus"):
        check_manifest(manifest, cfg, index_dir, other)


def test_damaged_index_refused(dense_dir: tuple[RetrievalConfig, Path], tmp_path: Path) -> None:
    cfg, index_dir = dense_dir
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in index_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    small = faiss.IndexFlatIP(384)
    small.add(unit_vectors(3, 384, 0))
    faiss.write_index(small, str(copy / FAISS_FILE))
    with pytest.raises(IndexMismatchError, match="holds 3 vectors"):
        open_retriever(dataclasses.replace(cfg, index_dir=str(copy)), copy, device="cpu")


def test_missing_manifest_explains(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match=r"python -m launch\.build_index"):
        Manifest.load(tmp_path)


def test_hnsw_close_to_exact() -> None:
    passages, queries = unit_vectors(2000, 32, 2), unit_vectors(50, 32, 3)
    cfg = RetrievalConfig(index_type="hnsw", hnsw_m=16, ef_search=64)
    index, train = new_faiss_index(32, 2000, cfg)
    assert train == 0
    index.add(passages)
    set_search_params(index, cfg)
    _, rows = index.search(queries, 5)
    want, _ = brute_force(queries, passages, 5)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(rows, want, strict=True)]) > 0.9


def test_ivfpq_trains_and_finds_near_duplicates() -> None:
    passages = unit_vectors(3000, 32, 4)
    cfg = RetrievalConfig(index_type="ivfpq", nprobe=8)
    index, train = new_faiss_index(32, 3000, cfg)
    assert 0 < train <= 3000 and not index.is_trained
    index.train(passages[:train])
    index.add(passages)
    set_search_params(index, cfg)
    assert faiss.extract_index_ivf(index).nprobe == 8
    noisy = passages[:100] + 0.05 * unit_vectors(100, 32, 5)
    _, rows = index.search(noisy.astype(np.float32), 10)
    assert np.mean([i in r for i, r in enumerate(rows)]) > 0.8


def test_bm25_index_and_manifest(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl")
    cfg = RetrievalConfig(method="bm25", corpus_path=str(corpus), index_dir=str(tmp_path / "bm25"))
    manifest = build_index(cfg, corpus, cfg.index_dir, progress=False)
    assert (manifest.method, manifest.num_passages, manifest.encoder) == ("bm25", len(TOPICS), None)
    retriever = build_retriever(cfg)
    assert retriever.search(["saxophone"], 1)[0][0].id == f"p{TOPICS.index('saxophone')}"
    with pytest.raises(IndexMismatchError, match=r"retrieval\.method"):
        build_retriever(dataclasses.replace(cfg, method="dense"))


def test_build_index_tool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from launch.build_index import main
    from launch.cli import run_tool

    corpus = write_corpus(tmp_path / "c.jsonl")
    out = tmp_path / "idx"
    assert run_tool(main, ["retrieval=bm25", f"retrieval.corpus_path={corpus}", f"retrieval.index_dir={out}"]) == 0
    assert Manifest.load(out).num_passages == len(TOPICS)
    assert "index of 16 passages (bm25) written to" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "contents": "x"}\n{"id": "b", "title": "t"}\n{oops\n')
    assert run_tool(main, ["retrieval=bm25", f"retrieval.corpus_path={bad}", f"retrieval.index_dir={out}2"]) == 1
    err = capsys.readouterr().err
    assert "line 2: missing field 'text'" in err and "line 3: not valid JSON" in err
    assert run_tool(main, [f"retrieval.corpus_path={corpus}"]) == 2
    assert "retrieval.index_dir" in capsys.readouterr().err
    assert run_tool(main, [f"retrieval.index_dir={out}3"]) == 2
    assert "retrieval.corpus_path: say which corpus" in capsys.readouterr().err
