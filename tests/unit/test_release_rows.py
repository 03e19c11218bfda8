"""StepSearch's released training rows: ``extra_info.support_docs`` as {title, paragraph_text} dicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.config import RewardConfig
from workers.data.problems import DataError
from workers.data.rows import read_rows
from workers.reward import score_trajectory
from workers.types import GroundTruth, Turn, support_doc_contents

PARIS = {"title": "Paris", "paragraph_text": "Paris is the capital and largest city of France."}
LOUVRE = {"title": "Louvre", "paragraph_text": " The Louvre is a museum in Paris. "}


def _release_row() -> dict:
    """A row shaped like the released StepSearch MuSiQue training data."""
    return {
        "data_source": "musique",
        "prompt": [{"role": "user", "content": "Answer the question. Question: Where is the Louvre?\n"}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule",
                         "ground_truth": {"target": ["France"],
                                          "search_keys": [["Louvre location"], ["capital of France"]]}},
        "extra_info": {"split": "train", "index": 7, "question": "Where is the Louvre?",
                       "support_docs": [LOUVRE, PARIS]},
    }


def _write(rows: list[dict], path: Path) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)  # support_docs: list<struct>
    return path


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_release_support_docs_read_as_contents(tmp_path: Path, suffix: str) -> None:
    (row,) = read_rows(_write([_release_row()], tmp_path / f"train.{suffix}"))
    assert row.ground_truth.support_docs == ('"Louvre"\nThe Louvre is a museum in Paris.',
                                             '"Paris"\nParis is the capital and largest city of France.')
    assert row.ground_truth.search_keys == (("Louvre location",), ("capital of France",))
    assert row.index == 7 and row.id == "7"


def test_string_and_dict_support_docs_mix(tmp_path: Path) -> None:
    record = _release_row()
    record["extra_info"]["support_docs"] = ['"Paris"\nParis is in France.', LOUVRE]
    (row,) = read_rows(_write([record], tmp_path / "train.jsonl"))
    assert row.ground_truth.support_docs == ('"Paris"\nParis is in France.',
                                             '"Louvre"\nThe Louvre is a museum in Paris.')


@pytest.mark.parametrize("doc, message", [
    ({"title": "Paris"}, r"'extra_info.support_docs\[1\]' must be a string or a \{title, paragraph_text\} dict"),
    (3, r"'extra_info.support_docs\[1\]' must be a string .* got int"),
    ({"title": 5, "paragraph_text": "x"}, r"'extra_info.support_docs\[1\]' has a non-string 'title'"),
])
def test_bad_support_doc_names_line_and_item(tmp_path: Path, doc: object, message: str) -> None:
    record = _release_row()
    record["extra_info"]["support_docs"] = [PARIS, doc]
    path = _write([record], tmp_path / "train.jsonl")
    with pytest.raises(DataError, match=rf"{path}:1: {message}"):
        read_rows(path)


def test_reward_scores_dict_gold_like_its_contents_string() -> None:
    retrieved = ('"Paris"\nParis is the capital and largest city of France.',)
    turns = [Turn("search", 0, 4, 4, 9, query="capital of France", doc_ids=("p1",), doc_texts=retrieved),
             Turn("answer", 9, 12, 12, 12)]
    text = "<search> capital of France </search> ... <answer> France </answer>"
    keys = (("capital of France",),)
    as_dicts = GroundTruth(("France",), keys, (PARIS, LOUVRE))  # type: ignore[arg-type]
    as_strings = GroundTruth(("France",), keys, tuple(support_doc_contents(d) for d in (PARIS, LOUVRE)))
    cfg = RewardConfig()
    by_dict, by_string = score_trajectory(turns, text, as_dicts, cfg), score_trajectory(turns, text, as_strings, cfg)
    assert by_dict == by_string
    # The retrieved passage is gold document 2 verbatim: cosine 1 with it, so G_1 >= 1/2.
    assert by_dict.step_gains[0] >= 0.5
