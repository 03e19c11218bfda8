"""The encoder's pass layouts (packing), its reduced-precision variants and their search results."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest

from retrieval_service import packing
from retrieval_service.encoders import DenseEncoder, resolve_dtype
from retrieval_service.packing import PACK_MAX_TOKENS, pack_rows, plan_layouts
from retrieval_service.retriever import DenseRetriever, build_retriever
from workers.config import Config, ConfigError, RetrievalConfig, validate

TEXTS = ["drem", "Kelvary", "capital of Zorbania", "who directed the film The Copper Lantern in 1987",
         "Quellin is a port city founded in 1412 by the merchant Ardo Vess.",
         "a much longer query about the university where the merchant who founded the northern port "
         "city of Quellin studied before he sailed to Bexmoor on the river Tarn " * 2,
         "Mirefield glassworks", "Hollin Pictures studio headquarters", "silver", "Bexmoor"]


def test_doctests_of_the_packing_module() -> None:
    assert doctest.testmod(packing).failed == 0


def test_pack_rows_puts_every_text_in_its_own_slots() -> None:
    rng = np.random.default_rng(0)
    for lengths in (rng.integers(1, 33, size=300).tolist(), rng.integers(1, 11, size=300).tolist()):
        rows, offsets, num_rows = pack_rows(lengths, width=32)
        taken: set[tuple[int, int]] = set()
        for row, start, n in zip(rows, offsets, lengths, strict=True):
            slots = {(row, c) for c in range(start, start + n)}
            assert start + n <= 32 and 0 <= row < num_rows and not slots & taken
            taken |= slots
    assert num_rows <= -(-sum(lengths) // 32) + 1  # short texts: best-fit decreasing leaves no holes
    assert pack_rows([16, 8, 16, 8, 8, 8, 16, 16], width=32)[2] == 3
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([40], width=32)


def test_plan_layouts_cover_each_text_once() -> None:
    lengths = [8, 300, 5, PACK_MAX_TOKENS, PACK_MAX_TOKENS + 1, 3, 12, 40]
    layouts = plan_layouts(lengths, max_rows=2, pack=True)
    assert sorted(t for p in layouts for t in p.texts) == list(range(len(lengths)))
    for p in layouts:
        assert len(p.texts) == len(p.rows) == len(p.offsets) and max(p.rows) < p.num_rows <= 2
        assert all(o + lengths[t] <= p.width for t, o in zip(p.texts, p.offsets, strict=True))
        assert p.packed == all(lengths[t] <= PACK_MAX_TOKENS for t in p.texts)
    assert all(not p.packed for p in plan_layouts(lengths, 2, pack=False))
    assert [p.packed for p in plan_layouts([7], 2, pack=True)] == [False]  # one query: the plain pass


@pytest.fixture(scope="module")
def fp32() -> DenseEncoder:
    return DenseEncoder(device="cpu", dtype="float32")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_rows_encode_like_padded_ones(fp32: DenseEncoder, pooling: str) -> None:
    encoder = fp32 if pooling == "mean" else DenseEncoder(pooling="cls", device="cpu", dtype="float32")
    assert encoder.packed  # MiniLM is a BERT: several texts share a row on CPU
    packed = encoder.encode_queries(TEXTS)
    encoder.packed = False
    try:
        padded = encoder.encode_queries(TEXTS)
    finally:
        encoder.packed = True
    # a leak across texts in a row (mask) or a wrong position id moves embeddings by far more
    np.testing.assert_allclose(packed, padded, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(packed, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("dtype", "min_cosine", "mean_cosine"), [("bfloat16", 0.999, 0.9995), ("int8", 0.98, 0.99)])
def test_reduced_precision_stays_close_to_fp32(fp32: DenseEncoder, dtype: str, min_cosine: float,
                                               mean_cosine: float) -> None:
    from retrieval_service.quantize import has_vnni

    if dtype == "int8" and not has_vnni():
        pytest.skip("7-bit int8 activations without VNNI are less accurate (quantize.py)")
    reference = fp32.encode_queries(TEXTS)
    reduced = DenseEncoder(device="cpu", dtype=dtype)
    embeddings = reduced.encode_queries(TEXTS)
    assert embeddings.dtype == np.float32
    cosines = np.sum(embeddings * reference, axis=1)
    assert cosines.min() > min_cosine and cosines.mean() > mean_cosine and cosines.max() < 1.0 + 1e-5
    # int8 scales each Linear's input per batch, so a query's embedding depends a little on its batch
    alone = np.concatenate([reduced.encode_queries([t]) for t in TEXTS[:4]])
    assert np.sum(alone * embeddings[:4], axis=1).min() > min_cosine


FACTS = [("Zorbania", "The capital of Zorbania is Quellin, a port on the northern sea."),
         ("Tavish Orr", "Tavish Orr directed the film The Copper Lantern in 1987."),
         ("Kelvary", "Kelvary is a country whose currency is the silver drem."),
         ("Mirefield", "Mirefield is a market town known for its glassworks and canals."),
         ("Hollin Pictures", "Hollin Pictures is a film studio headquartered in Bexmoor.")]


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_flat_search_with_reduced_precision_queries_is_exact(tmp_path: Path, dtype: str) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "title": t, "text": x}) + "\n"
                              for i, (t, x) in enumerate(FACTS)))
    cfg = RetrievalConfig(corpus_path=str(corpus), index_dir=str(tmp_path / "index"))
    build_retriever(cfg, device="cpu")  # the float32 index
    retriever = build_retriever(RetrievalConfig(index_dir=cfg.index_dir, encoder_dtype=dtype), device="cpu")
    assert isinstance(retriever, DenseRetriever) and retriever.encoder.dtype == dtype
    queries = ["capital of Zorbania", "who directed The Copper Lantern", "currency of Kelvary", "glass canals"]
    passages = retriever.index.reconstruct_n(0, retriever.num_passages)
    scores = retriever.encoder.encode_queries(queries) @ passages.T  # (Q, N), numpy brute force
    want = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    results = retriever.search(queries, 3)
    assert [[d.id for d in docs] for docs in results] == [[f"d{r}" for r in row] for row in want]
    np.testing.assert_allclose([[d.score for d in docs] for docs in results],
                               np.take_along_axis(scores, want, axis=1), rtol=1e-5, atol=1e-6)
    assert [docs[0].title for docs in results] == ["Zorbania", "Tavish Orr", "Kelvary", "Mirefield"]


def test_encoder_dtype_is_checked() -> None:
    assert resolve_dtype("auto", "cpu") == "float32" and resolve_dtype("int8", "cpu") == "int8"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_dtype("int8", "cuda")
    with pytest.raises(ValueError, match="encoder dtype must be"):
        resolve_dtype("int4", "cpu")
    cfg = Config()
    cfg.retrieval.encoder_dtype = "int4"
    with pytest.raises(ConfigError, match=r"retrieval\.encoder_dtype: must be one of"):
        validate(cfg)
