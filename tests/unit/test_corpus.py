"""Corpus parsing, line-numbered errors and the memory-mapped store (no Ray, no encoder)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from retrieval_service.corpus import (
    CORPUS_FILE,
    CorpusError,
    CorpusStore,
    parse_line,
    sha256_file,
    split_contents,
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_split_contents_wiki18_form() -> None:
    assert split_contents('"Paris"\nParis is the capital.') == ("Paris", "Paris is the capital.")
    assert split_contents('"A"\nline one\nline two') == ("A", "line one\nline two")
    assert split_contents("Untitled\ntext") == ("Untitled", "text")
    assert split_contents("just text") == ("", "just text")


def test_parse_line_accepts_both_formats() -> None:
    assert parse_line('{"id": "7", "contents": "\\"T\\"\\nbody"}') == ("7", "T", "body")
    assert parse_line('{"id": 7, "title": "T", "text": "body", "extra": 1}') == ("7", "T", "body")


def test_store_roundtrip_and_id_lookup(tmp_path: Path) -> None:
    rows = [{"id": "a", "contents": '"Alpha"\nfirst passage'},
            {"id": 2, "title": "Beta", "text": "second passage"},
            "   ",  # blank lines are skipped, not errors
            {"id": "c", "title": "", "text": "third"}]
    store = CorpusStore.build(write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "idx", progress=False)
    assert len(store) == 3
    assert store.row_of("a") == 0 and store.row_of("2") == 1 and store.row_of("c") == 2
    assert store.row_of("missing") is None and store.get("missing") is None
    doc = store.get("2")
    assert (doc.id, doc.title, doc.text, doc.score) == ("2", "Beta", "second passage", 0.0)
    docs = store.documents([2, 0], [0.5, 0.25])
    assert [(d.id, d.score) for d in docs] == [("c", 0.5), ("a", 0.25)]
    assert store.contents(range(0, 2)) == ['"Alpha"\nfirst passage', '"Beta"\nsecond passage']
    assert [len(b) for b in store.iter_contents(2)] == [2, 1]
    reopened = CorpusStore(tmp_path / "idx")  # from the directory alone
    assert reopened.get("a").title == "Alpha"


def test_id_lookup_at_scale_is_exact(tmp_path: Path) -> None:
    n = 5000
    rows = [{"id": f"doc-{i * 7919 % 100003}", "title": f"t{i}", "text": f"x{i}"} for i in range(n)]
    store = CorpusStore.build(write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "idx", progress=False)
    for i in range(0, n, 37):
        assert store.row_of(rows[i]["id"]) == i
    assert store.row_of("doc-100004") is None


def test_store_is_memory_mapped_not_heap(tmp_path: Path) -> None:
    rows = [{"id": str(i), "title": "T", "text": "word " * 200} for i in range(2000)]
    CorpusStore.build(write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "idx", progress=False)
    before = pa.total_allocated_bytes()
    store = CorpusStore(tmp_path / "idx")
    assert (tmp_path / "idx" / CORPUS_FILE).stat().st_size > 2_000_000
    assert pa.total_allocated_bytes() - before < 100_000  # the 2 MB of text stayed in the file
    assert store.get("1999").text.startswith("word")


def test_bad_lines_reported_with_line_numbers(tmp_path: Path) -> None:
    rows = [{"id": "a", "contents": "x"},
            "not json",
            {"id": "b"},
            {"title": "no id", "text": "t"},
            {"id": "a", "title": "t", "text": "dup"},
            "[1, 2]",
            {"id": True, "contents": "x"},
            {"id": "c", "title": "T", "text": None}]
    with pytest.raises(CorpusError) as info:
        CorpusStore.build(write_jsonl(tmp_path / "bad.jsonl", rows), tmp_path / "idx", progress=False)
    lines = [line for line, _ in info.value.problems]
    assert lines == [2, 3, 4, 5, 6, 7, 8]
    message = str(info.value)
    assert "line 2: not valid JSON" in message
    assert "line 3: missing field 'contents'" in message
    assert "line 4: missing field 'id'" in message
    assert "line 5: duplicate id 'a' (also on line 1)" in message
    assert "line 6: expected a JSON object" in message
    assert not (tmp_path / "idx" / CORPUS_FILE).exists()


def test_empty_corpus_refused(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no passages"):
        CorpusStore.build(write_jsonl(tmp_path / "e.jsonl", ["", " "]), tmp_path / "idx", progress=False)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_wiki_sample_loads(shared_data: Path, tmp_path: Path) -> None:
    store = CorpusStore.build(shared_data / "wiki_sample_corpus.jsonl", tmp_path / "idx", progress=False)
    assert len(store) == 1000
    first = store.get("0")
    assert first.title == "Evan Morris" and first.text.startswith("Evan Morris Evan L. Morris")
