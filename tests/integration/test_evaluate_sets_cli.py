"""``launch.evaluate eval_sets=[...]``: two prepared sets, one call, one table.

A 2WikiMultihopQA set searches its own corpus; a FlashRAG (Bamboogle-format) set, which
ships none, searches the corpus given after ``@``. HF generate and a random tiny policy
keep it fast, so the test checks the table's structure and its agreement with the
predictions, not scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.prepare_data import prepare
from tests.conftest import ROOT
from tests.integration.test_evaluate_cli import SMALL, run_tool
from workers.config import DataConfig
from workers.data.rows import read_rows

pytestmark = pytest.mark.integration


def _twowiki(i: int) -> dict:
    return {"_id": f"w{i}", "type": "compositional", "question": f"Who directed film number {i}?",
            "context": [[f"Film {i}", [f"Film {i} is a film directed by Ann Lee {i}."]],
                        [f"Ann Lee {i}", [f"Ann Lee {i} is a director."]]],
            "supporting_facts": [[f"Film {i}", 0]], "evidences": [[f"Film {i}", "director", f"Ann Lee {i}"]],
            "answer": f"Ann Lee {i}"}


def _flashrag(i: int) -> dict:
    return {"id": f"test_{i}", "question": f"What is the capital of country {i}?", "golden_answers": [f"City {i}"]}


def _prepared(tmp: Path, name: str, records: list[dict], **data: str) -> Path:
    source = tmp / f"{name}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp / name
    prepare(DataConfig(name=name, input_path=str(source), output_dir=str(out), split="test", **data))
    return out


def test_two_sets_in_one_call_give_one_table(small_toyworld: dict, tmp_path: Path) -> None:
    wiki = _prepared(tmp_path, "2wiki", [_twowiki(i) for i in range(3)])
    bamboo = _prepared(tmp_path, "bamboogle", [_flashrag(i) for i in range(3)], converter="flashrag")
    corpus = small_toyworld["dir"] / "corpus.jsonl"
    out = tmp_path / "eval"
    result = run_tool("launch.evaluate", f"checkpoint={small_toyworld['policy']}",
                      f"eval_sets=[{wiki},{bamboo}@{corpus}]", "limit=2", "batch_size=2", f"output={out}",
                      "retrieval.method=bm25", *SMALL)
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("set "))
    assert lines[header].split() == ["set", "n", "EM", "F1", "cover-EM", "searches", "gold-hit"]
    table = [line.split() for line in lines[header + 1:header + 4]]
    assert [cells[:2] for cells in table] == [["2Wiki", "2"], ["Bamboogle", "2"], ["average", "4"]]
    assert table[1][-1] == "-" and table[0][-1] != "-"  # gold-hit only where support docs exist
    assert "2Wiki" in result.stderr and "Bamboogle" in result.stderr  # a progress bar per set

    saved = json.loads((out / "eval-sets-test.json").read_text())
    assert [s["name"] for s in saved["sets"]] == ["2Wiki", "Bamboogle"] and saved["limit"] == 2
    for cells, entry in zip(table, saved["sets"], strict=False):
        records = [json.loads(line) for line in Path(entry["predictions"]).read_text().splitlines()]
        assert len(records) == entry["questions"] == 2
        assert abs(sum(r["em"] for r in records) / 2 - entry["em"]) < 1e-9
        assert abs(sum(r["num_searches"] for r in records) / 2 - entry["searches"]) < 1e-9
        assert float(cells[2]) == pytest.approx(entry["em"], abs=5e-4)
    assert saved["sets"][1]["gold_hit"] is None
    assert saved["average"]["em"] == pytest.approx((saved["sets"][0]["em"] + saved["sets"][1]["em"]) / 2)
    assert saved["average"]["questions"] == 4
    predictions = (out / "predictions-bamboogle-test.jsonl").read_text().splitlines()
    ids = [json.loads(line)["sample_id"] for line in predictions]
    assert ids == [f"{r.id}#0" for r in read_rows(bamboo / "test.parquet")[:2]]
    markdown = (out / "eval-sets-test.md").read_text().splitlines()
    assert markdown[0] == "| set | n | EM | F1 | cover-EM | searches | gold-hit |"
    assert [line.split(" | ")[0] for line in markdown[2:]] == ["| 2Wiki", "| Bamboogle", "| **average**"]


def test_a_flashrag_set_without_a_corpus_is_refused_before_any_work(small_toyworld: dict, tmp_path: Path) -> None:
    bamboo = _prepared(tmp_path, "bamboogle", [_flashrag(0)], converter="flashrag")
    result = subprocess.run([sys.executable, "-m", "launch.evaluate", f"checkpoint={small_toyworld['policy']}",
                             f"eval_sets=[{bamboo}]", *SMALL], cwd=ROOT, env=dict(os.environ),
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert "eval_sets: " in result.stderr and "has no corpus.jsonl (FlashRAG sets ship none)" in result.stderr
