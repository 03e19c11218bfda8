"""``launch.evaluate`` and ``launch.ask`` end to end on a small toyworld with a tiny policy.

The tools run as subprocesses (the way users run them) with HF generate to stay fast. A
random tiny policy writes mostly invalid actions, so the tests check structure, not scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from workers.config import TinyModelConfig
from workers.data.rows import read_rows

pytestmark = pytest.mark.integration

TINY = TinyModelConfig(vocab_size=800, num_layers=2)
SMALL = ["trainer=tiny", "rollout.engine=hf", "rollout.max_action_tokens=16", "rollout.max_response_tokens=128",
         "rollout.max_obs_tokens=64", "rollout.max_turns=2"]
RECORD_FIELDS = {"sample_id", "data_source", "question", "targets", "prediction", "em", "f1", "cover_em",
                 "format_ok", "num_hops", "num_searches", "gold_hit", "redundancy", "response_text", "turns"}


@pytest.fixture(scope="module")
def toy(small_toyworld: dict) -> dict:
    return small_toyworld


def run_tool(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1"}
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{module} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result


def test_evaluate_prints_the_table_and_writes_one_prediction_per_row(toy: dict) -> None:
    result = run_tool("launch.evaluate", f"checkpoint={toy['policy']}", f"data.output_dir={toy['dir']}",
                      "limit=3", "batch_size=2", *SMALL)
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("source"))
    assert lines[header].split() == ["source", "n", "EM", "F1", "cover-EM", "searches", "gold-hit",
                                     "redundancy", "format", "empty"]
    last = next(i for i, line in enumerate(lines) if line.startswith("all "))
    table = [line.split() for line in lines[header + 1:last + 1]]
    assert [cells[:2] for cells in (table[0], table[-1])] == [["toyworld", "3"], ["all", "3"]]
    assert all(0.0 <= float(c) for cells in table for c in cells[2:])
    hops = {int(cells[0].removesuffix("-hop")): int(cells[1]) for cells in table[1:-1]}  # one line per hop count
    rows = read_rows(toy["dir"] / "test.parquet")[:3]
    assert hops == {h: sum(r.num_hops == h for r in rows) for h in {r.num_hops for r in rows}}
    assert "evaluate" in result.stderr  # the progress bar
    path = toy["policy"] / "predictions-test.jsonl"  # the default: beside the checkpoint
    assert lines[-2:] == [f"predictions: {path}", f"metrics:     {toy['policy'] / 'predictions-test.metrics.json'}"]
    overall = json.loads((toy["policy"] / "predictions-test.metrics.json").read_text())
    assert overall["questions"] == 3 and overall["split"] == "test"
    assert abs(overall["eval/em"] - float(lines[last].split()[2])) < 1e-3  # the table's "all" row
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["num_hops"] for r in records] == [row.num_hops for row in rows]
    assert [r["sample_id"] for r in records] == [f"{row.id}#0" for row in rows]
    assert [r["question"] for r in records] == [row.question for row in rows]
    for record in records:
        assert set(record) == RECORD_FIELDS and record["turns"]
        assert all({"kind", "text"} <= set(turn) for turn in record["turns"])
        assert all({"query", "doc_ids", "doc_titles"} <= set(turn)
                   for turn in record["turns"] if turn["kind"] == "search")


def test_evaluate_without_checkpoint_uses_the_model_config_policy(toy: dict, tmp_path: Path) -> None:
    # The tiny preset with the fixture's sizes and build dir resolves to the cached policy.
    output = tmp_path / "val.jsonl"
    result = run_tool("launch.evaluate", f"data.output_dir={toy['dir']}", "split=validation", "limit=2",
                      f"output={output}", f"model.build_dir={toy['dir'] / 'models'}",
                      f"model.tiny.vocab_size={TINY.vocab_size}", f"model.tiny.num_layers={TINY.num_layers}",
                      "retrieval.method=bm25", *SMALL)
    assert f"policy: {toy['policy']}" in result.stdout
    assert result.stdout.splitlines()[-2] == f"predictions: {output}"
    assert (tmp_path / "val.metrics.json").exists()
    assert len(output.read_text().splitlines()) == 2


def test_ask_prints_the_trajectory_and_no_score(toy: dict) -> None:
    question = read_rows(toy["dir"] / "test.parquet")[0].question
    result = run_tool("launch.ask", f"question={question}", f"checkpoint={toy['policy']}",
                      f"data.output_dir={toy['dir']}", "retrieval.method=bm25", *SMALL)
    lines = result.stdout.splitlines()
    assert f"question: {question}" in lines
    assert lines[lines.index(f"question: {question}") + 1].startswith("[turn 1] ")
    assert lines[-1].startswith("answer: ")
    own_lines = [line for line in lines if not line.startswith("    ")]  # not the policy's text
    assert not any(word in line for line in own_lines for word in ("EM", "F1", "score"))
