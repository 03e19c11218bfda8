"""Row files round-trip; launch.prepare_data writes splits, corpus and counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.cli import run_tool
from launch.prepare_data import main as prepare_main
from workers.data.corpus import read_corpus_jsonl
from workers.data.problems import DataError
from workers.data.rows import make_row, read_rows, row_to_dict, write_rows

SMALL_WORLD = ["data.toyworld.num_people=80", "data.toyworld.num_films=30",
               "data.toyworld.num_companies=20", "data.toyworld.num_questions=120"]


def _row():
    return make_row(id="q1", data_source="musique", question="Who?", targets=["Ann", "A."],
                    search_keys=[["k1", "k1b"], ["k2"]], support_docs=['"T"\ntext'],
                    support_doc_ids=["p-1"], split="train", index=0, num_hops=2)


@pytest.mark.parametrize("suffix", ["parquet", "jsonl"])
def test_rows_round_trip(tmp_path: Path, suffix: str) -> None:
    row = _row()
    write_rows([row], tmp_path / f"r.{suffix}")
    (back,) = read_rows(tmp_path / f"r.{suffix}")
    assert back == row


def test_row_on_disk_has_the_stepsearch_shape() -> None:
    d = row_to_dict(_row())
    assert d["reward_model"]["ground_truth"] == {"target": ["Ann", "A."], "search_keys": [["k1", "k1b"], ["k2"]]}
    assert d["extra_info"]["support_docs"] == ['"T"\ntext'] and d["extra_info"]["split"] == "train"
    assert d["prompt"][0]["role"] == "user" and d["ability"]


def test_bad_rows_name_file_line_and_field(tmp_path: Path) -> None:
    good = row_to_dict(_row())
    bad = json.loads(json.dumps(good))
    bad["reward_model"]["ground_truth"]["target"] = []
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: 'reward_model.ground_truth.target' has no non-empty answer"):
        read_rows(path)
    del bad["reward_model"]
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r":1: missing field 'reward_model.ground_truth.target'"):
        read_rows(path)


@pytest.mark.parametrize("value", ["two", -1, 2.5, True])
def test_a_bad_hop_count_names_the_line_and_field(tmp_path: Path, value: object) -> None:
    bad = row_to_dict(_row())
    bad["extra_info"]["num_hops"] = value
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row_to_dict(_row())) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: 'extra_info.num_hops' must be a non-negative integer"):
        read_rows(path)


def test_the_hop_count_reaches_the_ground_truth(tmp_path: Path) -> None:
    assert _row().ground_truth.num_hops == 2  # evaluation groups episodes by it
    d = row_to_dict(_row())
    d["extra_info"]["num_hops"] = 3
    del d["extra_info"]["index"]
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(d) + "\n")
    (back,) = read_rows(path)
    assert back.num_hops == back.ground_truth.num_hops == 3 and back.index == 0


def test_prepare_toyworld_writes_splits_corpus_and_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_tool(prepare_main, [f"data.output_dir={tmp_path}", *SMALL_WORLD])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rows: train" in printed and "dropped rows: 0" in printed and "corpus passages:" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sum(summary["rows"].values()) == 120
    rows = read_rows(tmp_path / "train.parquet")
    passages = {p.id: p for p in read_corpus_jsonl(tmp_path / "corpus.jsonl")}
    assert summary["corpus_passages"] == len(passages)
    for row in rows:  # every gold paragraph is in the corpus, verbatim
        for pid, doc in zip(row.support_doc_ids, row.ground_truth.support_docs, strict=True):
            assert passages[pid].contents == doc


def test_prepare_is_stable_across_runs(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert run_tool(prepare_main, [f"data.output_dir={tmp_path / name}", *SMALL_WORLD]) == 0
    assert (tmp_path / "a" / "corpus.jsonl").read_bytes() == (tmp_path / "b" / "corpus.jsonl").read_bytes()
    assert read_rows(tmp_path / "a" / "test.parquet") == read_rows(tmp_path / "b" / "test.parquet")


def test_prepare_musique_reports_dropped_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "m.jsonl"
    src.write_text('{"id": "x", "question": "q?", "answer": ""}\nnot json\n')
    code = run_tool(prepare_main, ["data=musique", f"data.input_path={src}", f"data.output_dir={tmp_path / 'o'}"])
    assert code == 1
    assert "no usable rows" in capsys.readouterr().err


def test_prepare_real_musique(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_tool(prepare_main, ["data=musique", f"data.input_path={shared_data / 'musique_train100.json'}",
                                   f"data.output_dir={tmp_path}"])
    assert code == 0
    assert "dropped rows: 0; corpus passages: 1890" in capsys.readouterr().out
