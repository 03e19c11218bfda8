"""launch.experiments.info_gain_probe: the gain of each search under both idf choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.experiments.info_gain_probe import main, musique_gains
from workers.data.rows import make_row, write_rows
from workers.reward import CorpusIdf, information_gains

PASSAGES = {
    "p1": ("Ann Vel", "Ann Vel is a lawyer born in Tobei."),
    "c1": ("Tobei", "Tobei is a city in Kazan, with about 5000 residents."),
    "c2": ("Lomur", "Lomur is a city in Furqui, with about 7000 residents."),
    "c3": ("Dorsha", "Dorsha is a city in Kazan, with about 9000 residents."),
}


def _contents(pid: str) -> str:
    title, text = PASSAGES[pid]
    return f'"{title}"\n{text}'


def _prediction(sample_id: str, *searches: list[str]) -> dict:
    turns = [{"kind": "search", "doc_ids": ids} for ids in searches] + [{"kind": "answer"}]
    return {"sample_id": sample_id, "prediction": "x", "em": 0.0, "num_hops": 2,
            "num_searches": len(searches), "turns": turns}


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, Path]:
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    (data / "corpus.jsonl").write_text("".join(json.dumps({"id": pid, "title": t, "text": x}) + "\n"
                                               for pid, (t, x) in PASSAGES.items()))
    write_rows([make_row(id="q1", data_source="toyworld", question="Which country is Ann Vel from?",
                         targets=["Kazan"], search_keys=[["Ann Vel born"], ["country of Tobei"]],
                         support_docs=[_contents("p1"), _contents("c1")], support_doc_ids=["p1", "c1"],
                         split="test", index=0, num_hops=2)], data / "test.jsonl")
    records = [_prediction("q1#0", ["p1"], ["c1"]), _prediction("q1#1", ["p1"], ["c2"])]
    (run / "stepsearch-seed1").mkdir(parents=True)
    (run / "stepsearch-seed1" / "test_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return data, run


def test_gains_per_search_match_the_reward(layout: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, run = layout
    assert main([str(run), "--data", str(data)]) == 0
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in capsys.readouterr().out.splitlines()
             if line[:1].isdigit()}
    gold = [_contents("p1"), _contents("c1")]
    idf = CorpusIdf.from_texts(_contents(p) for p in PASSAGES)
    right = [[_contents("p1")], [_contents("c1")]]
    wrong = [[_contents("p1")], [_contents("c2")]]
    assert lines[("1", "new")] == ["gold", "2", f"{information_gains(right, gold)[0]:.3f}",
                                   f"{information_gains(right, gold, idf.cosines)[0]:.3f}"]
    assert lines[("2", "new")] == ["gold", "1", f"{information_gains(right, gold)[1]:.3f}",
                                   f"{information_gains(right, gold, idf.cosines)[1]:.3f}"]
    assert lines[("2", "no")] == ["new", "gold", "1", f"{information_gains(wrong, gold)[1]:.3f}",
                                  f"{information_gains(wrong, gold, idf.cosines)[1]:.3f}"]


def test_bad_inputs_are_named(layout: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, run = layout
    predictions = run / "stepsearch-seed1" / "test_predictions.jsonl"
    predictions.write_text(json.dumps(_prediction("q1#0", ["p1"], ["c9"])) + "\n")
    assert main([str(run), "--data", str(data)]) == 1
    assert "passage 'c9' is not in the corpus" in capsys.readouterr().err
    predictions.write_text(json.dumps(_prediction("q7#0", ["p1"])) + "\n")
    assert main([str(run), "--data", str(data)]) == 1
    assert "'q7#0' has no test row" in capsys.readouterr().err
    with (data / "corpus.jsonl").open("a") as fh:
        fh.write("{oops\n")
    assert main([str(run), "--data", str(data)]) == 1
    assert "line 5: not valid JSON" in capsys.readouterr().err
    bad = data / "musique.json"
    bad.write_text('[{"paragraphs": [{"title": "x"}]}]')
    assert main(["--musique", str(bad)]) == 1
    assert "not MuSiQue's JSON format" in capsys.readouterr().err


def test_musique_distractors_earn_less_with_the_corpus_idf(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "musique_train100.json"
    if not path.is_file():
        pytest.skip(f"the MuSiQue sample is not at {path}")
    gains = musique_gains(path)
    pair_gold, pair_other, n_gold, n_other = gains["pair"]
    corpus_gold, corpus_other, _, _ = gains["corpus"]
    assert n_gold > 200 and n_other > 1000  # 100 questions of 20 paragraphs, 2-4 supporting
    assert pair_other < pair_gold and corpus_other < corpus_gold
    assert corpus_other / corpus_gold < pair_other / pair_gold
