"""MuSiQue and HotpotQA converters on the real samples and on hand-made bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.data.hotpotqa import convert_hotpotqa
from workers.data.musique import convert_musique, resolve_references, step_key_group
from workers.data.problems import DataError, ProblemLog
from workers.data.sources import iter_json_records


def _musique_record(**overrides: object) -> dict:
    record = {
        "id": "2hop__1_2", "question": "Who founded the company that made X?", "answer": "Ann Lee",
        "answer_aliases": ["A. Lee"], "answerable": True,
        "paragraphs": [
            {"idx": 0, "title": "X", "paragraph_text": "X was made by Acme.", "is_supporting": True},
            {"idx": 1, "title": "Acme", "paragraph_text": "Acme was founded by Ann Lee.", "is_supporting": True},
            {"idx": 2, "title": "Other", "paragraph_text": "Unrelated.", "is_supporting": False},
        ],
        "question_decomposition": [
            {"id": 1, "question": "X >> manufacturer", "answer": "Acme", "paragraph_support_idx": 0},
            {"id": 2, "question": "Who founded #1?", "answer": "Ann Lee", "paragraph_support_idx": 1},
        ],
    }
    record.update(overrides)
    return record


def test_musique_record_becomes_a_stepsearch_row() -> None:
    out = convert_musique([("f[0]", _musique_record())], split="train")
    (row,) = out.rows
    assert row.ground_truth.target == ("Ann Lee", "A. Lee")
    assert row.ground_truth.search_keys == (("X manufacturer", "manufacturer of X"),
                                            ("founded Acme", "Who founded Acme"))
    assert row.ground_truth.support_docs == ('"X"\nX was made by Acme.', '"Acme"\nAcme was founded by Ann Lee.')
    assert len(out.passages) == 3 and row.support_doc_ids[0] in out.passages
    assert row.num_hops == 2 and row.split == "train"
    assert "Who founded the company that made X?" in row.prompt[0]["content"]


@pytest.mark.parametrize(("change", "reason"), [
    ({"answer": "  "}, "empty answer"),
    ({"paragraphs": None}, "missing field 'paragraphs'"),
    ({"answerable": False}, "unanswerable"),
    ({"question_decomposition": [{"question": "Who founded #2?", "answer": "A", "paragraph_support_idx": 1}]},
     "refers to #2"),
    ({"question_decomposition": [{"question": "q", "answer": "A", "paragraph_support_idx": 7}]},
     "dangling paragraph_support_idx 7"),
])
def test_bad_musique_records_are_dropped_with_their_place_and_reason(change: dict, reason: str) -> None:
    out = convert_musique([("f.jsonl:1", _musique_record()), ("f.jsonl:2", _musique_record(**change))],
                          split="train")
    assert len(out.rows) == 1
    (problem,) = out.problems.problems
    assert problem.where == "f.jsonl:2" and reason in problem.reason


def test_jsonl_lines_that_are_not_json_are_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_musique_record()) + "\n{not json\n\n" + json.dumps(_musique_record(id="b")) + "\n")
    problems = ProblemLog()
    out = convert_musique(iter_json_records(path, problems), split="train")
    assert len(out.rows) == 2
    assert [p.where for p in problems.problems] == [f"{path}:2"]


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        list(iter_json_records(tmp_path / "absent.json", ProblemLog()))


def test_references_and_relational_steps() -> None:
    resolved = resolve_references("Who was the first president of #1 ?", ["APA"], 2)
    assert resolved == "Who was the first president of APA ?"
    assert step_key_group("Johnnycake >> located in the administrative territorial entity")[0] == (
        "Johnnycake located in the administrative territorial entity")
    with pytest.raises(DataError):
        resolve_references("#1 >> father", [], 1)


def test_real_musique_sample(shared_data: Path) -> None:
    out = convert_musique(iter_json_records(shared_data / "musique_train100.json", ProblemLog()),
                          val_fraction=0.1, test_fraction=0.1)
    assert len(out.rows) == 100 and len(out.problems) == 0
    corpus = json.loads((shared_data / "musique_train100_corpus.json").read_text())
    assert len(out.passages) == len({(p["title"], p["text"]) for p in corpus})
    for row in out.rows:
        assert len(row.ground_truth.search_keys) == row.num_hops >= 2
        assert all("#" not in key for group in row.ground_truth.search_keys for key in group)
        assert row.ground_truth.support_docs and all(i in out.passages for i in row.support_doc_ids)
    first = out.rows[0]
    assert first.ground_truth.search_keys[1][0] == "first president of American Psychological Association"
    assert {r.split for r in out.rows} == {"train", "validation", "test"}


def test_real_hotpotqa_sample(shared_data: Path) -> None:
    out = convert_hotpotqa(iter_json_records(shared_data / "hotpotqa_train100.json", ProblemLog()))
    assert len(out.rows) == 100 and len(out.problems) == 0
    row = out.rows[0]
    assert row.ground_truth.search_keys == (("Alû",), ("Lilu (mythology)",))
    assert row.ground_truth.support_docs[0].startswith('"Alû"\n')
    assert row.ground_truth.target == ("a spirit",)


def test_hotpotqa_support_title_missing_from_context_is_dropped() -> None:
    record = {"_id": "h1", "question": "q?", "answer": "a", "type": "bridge", "level": "easy",
              "context": [["T", ["One.", " Two."]]], "supporting_facts": [["T", 0], ["Absent", 1]]}
    out = convert_hotpotqa([("h.json[0]", record)])
    assert not out.rows and "'Absent' is not in the context" in out.problems.problems[0].reason
