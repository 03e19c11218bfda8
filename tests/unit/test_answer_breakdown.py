"""launch.experiments.answer_breakdown: EM and empty answers per hop count from predictions files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.experiments.answer_breakdown import breakdown, collect, main


def _record(hops: int, searches: int, prediction: str | None, em: float) -> dict:
    return {"sample_id": "q", "prediction": prediction, "em": em, "num_hops": hops, "num_searches": searches}


def _write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


SFT = [_record(2, 2, "Paris", 1.0), _record(2, 3, "", 0.0), _record(3, 4, " ", 0.0), _record(3, 3, None, 0.0)]


def test_groups_by_hops_then_searches() -> None:
    rows = {name: (n, em, empty) for name, n, em, empty in breakdown(SFT)}
    assert rows["2-hop"] == (2, 0.5, 0.5)
    assert rows["  2-hop, 3 searches"] == (1, 0.0, 1.0)
    assert rows["3-hop"] == (2, 0.0, 0.5)  # None is no answer at all, not an empty one
    assert rows["all"] == (4, 0.25, 0.5)


def test_collects_the_warm_start_once_and_pools_the_seeds(tmp_path: Path) -> None:
    for run in ("a", "b"):  # two runs from one warm start: its predictions are identical
        _write(tmp_path / run / "sft_test_predictions.jsonl", SFT)
    _write(tmp_path / "a" / "stepsearch-seed1" / "test_predictions.jsonl", [_record(2, 2, "x", 0.0)])
    _write(tmp_path / "b" / "stepsearch-seed4" / "test_predictions.jsonl", [_record(2, 2, "Paris", 1.0)])
    _write(tmp_path / "b" / "outcome_only-seed4" / "test_predictions.jsonl", [_record(4, 3, "y", 0.0)])
    policies = collect([tmp_path / "a", tmp_path / "b"])
    assert sorted(policies) == ["outcome_only", "sft", "stepsearch"]
    assert len(policies["sft"]) == 4 and len(policies["stepsearch"]) == 2


def test_bad_input_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sft_test_predictions.jsonl").write_text(json.dumps(SFT[0]) + "\n{not json\n")
    assert main([str(tmp_path)]) == 1
    assert "sft_test_predictions.jsonl:2: not a prediction record" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 1 and "no such run directory" in capsys.readouterr().err
    (tmp_path / "sft_test_predictions.jsonl").unlink()
    assert main([str(tmp_path)]) == 1 and "no sft_test_predictions.jsonl" in capsys.readouterr().err
    assert main([]) == 2
