"""``launch.evaluate eval_sets=[...]`` without a model: resolving entries, retrieval per set,
and the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.config import load_config
from launch.eval_sets import load_set, parse_set_list, set_root
from launch.evaluate import parse_eval_args
from workers.config import ConfigError
from workers.data.flashrag import convert_flashrag
from workers.data.rows import write_rows
from workers.data.twowiki import convert_twowiki
from workers.eval_table import SetScore, average, table_json, table_markdown, table_text


def _flash_dir(tmp_path: Path, name: str = "bamboogle", n: int = 3) -> Path:
    records = [(f"f:{i}", {"id": f"q{i}", "question": f"Q{i}?", "golden_answers": [f"A{i}"]}) for i in range(n)]
    write_rows(convert_flashrag(records, data_source=name).rows, tmp_path / name / "test.parquet")
    return tmp_path / name


def _wiki_dir(tmp_path: Path) -> Path:
    record = {"_id": "w", "question": "Who directed F?", "answer": "Ann", "context": [["F", ["F is by Ann."]]],
              "supporting_facts": [["F", 0]], "evidences": [["F", "director", "Ann"]]}
    root = tmp_path / "wiki"
    write_rows(convert_twowiki([("w:1", record)], split="test").rows, root / "test.jsonl")
    (root / "corpus.jsonl").write_text(json.dumps({"id": "p1", "contents": '"F"\nF is by Ann.'}) + "\n")
    return root


def test_the_set_list_parses_with_or_without_brackets() -> None:
    assert parse_set_list("[a, 'b@c/d']") == ("a", "b@c/d")
    assert parse_set_list("a") == ("a",)
    with pytest.raises(ConfigError, match="eval_sets"):
        parse_set_list("[a,,b]")
    assert parse_eval_args({"eval_sets": "[x,y]", "limit": "5"}).eval_sets == ("x", "y")
    assert parse_eval_args({}).eval_sets == ()


def test_entries_are_directories_or_data_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _flash_dir(tmp_path / "sets")
    assert set_root(str(root)) == root
    monkeypatch.chdir(tmp_path)  # the bamboogle preset's output_dir is data/bamboogle
    with pytest.raises(ConfigError, match=r"bamboogle: the preset's output_dir data/bamboogle does not exist: "
                                          r"run `python -m launch.prepare_data data=bamboogle"):
        set_root("bamboogle")
    (tmp_path / "data").mkdir()
    root.rename(tmp_path / "data" / "bamboogle")
    assert set_root("bamboogle") == Path("data/bamboogle")
    with pytest.raises(ConfigError, match="'nowhere' is neither a directory nor a data preset"):
        set_root("nowhere")


def test_each_set_gets_its_own_corpus_the_shared_one_or_its_override(tmp_path: Path) -> None:
    cfg = load_config([])
    wiki = load_set(cfg, str(_wiki_dir(tmp_path)), "test", None)  # jsonl found though data.format=parquet
    assert (wiki.name, len(wiki.rows)) == ("2Wiki", 1)
    assert wiki.retrieval.corpus_path == str(tmp_path / "wiki" / "corpus.jsonl")
    flash = str(_flash_dir(tmp_path))
    with pytest.raises(ConfigError, match=r"has no corpus.jsonl \(FlashRAG sets ship none\): set retrieval"):
        load_set(cfg, flash, "test", None)
    corpus = tmp_path / "wiki" / "corpus.jsonl"
    bamboo = load_set(cfg, f"{flash}@{corpus}", "test", 2)
    assert (bamboo.name, len(bamboo.rows), bamboo.retrieval.corpus_path) == ("Bamboogle", 2, str(corpus))
    with pytest.raises(ConfigError, match="is not a built index"):
        load_set(cfg, f"{flash}@{tmp_path}", "test", None)
    shared = load_config([f"retrieval.corpus_path={corpus}"])
    assert load_set(shared, flash, "test", None).retrieval == shared.retrieval


def test_the_average_is_the_unweighted_mean_and_gold_hit_skips_sets_without_it() -> None:
    scores = [SetScore("HotpotQA", 100, 0.30, 0.40, 0.35, 2.0, 0.5),
              SetScore("Bamboogle", 20, 0.10, 0.20, 0.15, 1.0, None)]
    avg = average(scores)
    assert (avg.questions, avg.em, avg.f1, avg.cover_em, avg.searches, avg.gold_hit) == pytest.approx(
        (120, 0.20, 0.30, 0.25, 1.5, 0.5))
    lines = table_text(scores).splitlines()
    assert [line.split()[0] for line in lines] == ["set", "HotpotQA", "Bamboogle", "average"]
    assert lines[2].split()[-1] == "-" and lines[3].split()[2] == "0.200"
    assert table_markdown(scores).splitlines()[-1] == "| **average** | 120 | 0.200 | 0.300 | 0.250 | 1.500 | 0.500 |"
    saved = table_json(scores, split="test")
    assert saved["split"] == "test" and saved["sets"][1]["gold_hit"] is None
    assert saved["average"]["em"] == pytest.approx(0.2) and "predictions" not in saved["average"]
