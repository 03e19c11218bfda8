"""2WikiMultihopQA and FlashRAG converters: hand-made rows, bad rows, real samples,
``launch.prepare_data`` presets, and the refusal to train a reward term on rows without its inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.cli import run_tool
from launch.config import load_config
from launch.prepare_data import main as prepare_main
from workers.config import ConfigError, RewardConfig
from workers.data.corpus import read_corpus_jsonl
from workers.data.flashrag import convert_flashrag, paper_name
from workers.data.hotpotqa import convert_hotpotqa
from workers.data.problems import ProblemLog
from workers.data.reward_inputs import check_reward_inputs, check_training_rows
from workers.data.rows import read_rows
from workers.data.sources import iter_json_records
from workers.data.twowiki import DATA_SOURCE, convert_twowiki, evidence_key_group


def _twowiki_record(**overrides: object) -> dict:
    record = {
        "_id": "8813f87c0bdd11eba7f7acde48001122", "type": "compositional",
        "question": "Who is the mother of the director of film Polish-Russian War?",
        "context": [
            ["Polish-Russian War (film)", ["Polish-Russian War is a 2009 film", "directed by Xawery Żuławski."]],
            ["Xawery Żuławski", ["Xawery Żuławski is a Polish director.", "His mother is Małgorzata Braunek."]],
            ["Other film", ["Unrelated."]],
        ],
        "supporting_facts": [["Polish-Russian War (film)", 1], ["Xawery Żuławski", 1], ["Xawery Żuławski", 0]],
        "evidences": [["Polish-Russian War", "director", "Xawery Żuławski"],
                      ["Xawery Żuławski", "mother", "Małgorzata Braunek"]],
        "answer": "Małgorzata Braunek",
    }
    record.update(overrides)
    return record


def _flashrag_record(**overrides: object) -> dict:
    record = {"id": "test_0", "question": "Who was president of the U.S. when superconductivity was discovered?",
              "golden_answers": ["William Howard Taft", "Taft"], "metadata": {"source": "hand-made"}}
    record.update(overrides)
    return record


def test_twowiki_record_becomes_a_row_with_one_key_group_per_evidence() -> None:
    out = convert_twowiki([("f[0]", _twowiki_record())], split="test")
    (row,) = out.rows
    assert row.data_source == DATA_SOURCE == "2wikimultihopqa" and paper_name(row.data_source) == "2Wiki"
    assert row.ground_truth.target == ("Małgorzata Braunek",)
    assert row.ground_truth.search_keys == (("Polish-Russian War director", "director of Polish-Russian War"),
                                            ("Xawery Żuławski mother", "mother of Xawery Żuławski"))
    assert row.ground_truth.support_docs == (
        '"Polish-Russian War (film)"\nPolish-Russian War is a 2009 film directed by Xawery Żuławski.',
        '"Xawery Żuławski"\nXawery Żuławski is a Polish director. His mother is Małgorzata Braunek.')
    assert row.num_hops == 2 and row.split == "test"
    assert len(out.passages) == 3 and set(row.support_doc_ids) <= set(out.passages)


def test_twowiki_aliases_repeated_evidences_and_prepositional_relations() -> None:
    record = _twowiki_record(answer_aliases=["M. Braunek", "Małgorzata Braunek"],
                             evidences=[["Ann", "educated at", "MIT"], ["Ann", "educated at", "MIT"]])
    (row,) = convert_twowiki([("f[0]", record)], split="train").rows
    assert row.ground_truth.target == ("Małgorzata Braunek", "M. Braunek")
    assert row.ground_truth.search_keys == (("Ann educated at",),)
    assert row.num_hops == 2  # the number of evidences, repeated or not
    assert evidence_key_group("  The  Film ", "country of origin") == ["The Film country of origin",
                                                                     "country of origin of The Film"]


def test_twowiki_without_evidences_keys_on_the_supporting_titles() -> None:
    (row,) = convert_twowiki([("f[0]", _twowiki_record(evidences=[]))], split="train").rows
    assert row.ground_truth.search_keys == (("Polish-Russian War (film)",), ("Xawery Żuławski",))
    assert row.num_hops == 2


@pytest.mark.parametrize(("change", "reason"), [
    ({"answer": " "}, "empty answer"),
    ({"context": None}, "missing field 'context'"),
    ({"context": [["T", "not a list"]]}, "not [title, [sentences]]"),
    ({"supporting_facts": [["Nowhere", 0]]}, "'Nowhere' is not in the context"),
    ({"supporting_facts": []}, "no supporting facts"),
    ({"evidences": [["A", "director"]]}, "evidence 0 is not [subject, relation, object]"),
    ({"evidences": [["A", "director", "B"], ["A", "", "B"]]}, "evidence 1 is not"),
    ({"answer_aliases": "M. B."}, "'answer_aliases' is not a list"),
])
def test_bad_twowiki_records_are_dropped_with_place_and_reason(change: dict, reason: str) -> None:
    out = convert_twowiki([("dev.jsonl:1", _twowiki_record()), ("dev.jsonl:2", _twowiki_record(**change)),
                           ("dev.jsonl:3", ["not", "an", "object"])], split="test")
    assert len(out.rows) == 1
    assert [p.where for p in out.problems.problems] == ["dev.jsonl:2", "dev.jsonl:3"]
    assert reason in out.problems.problems[0].reason
    assert out.problems.problems[1].reason == "record is not a JSON object"


def test_flashrag_record_becomes_an_evaluation_row() -> None:
    (row,) = convert_flashrag([("b.jsonl:1", _flashrag_record())], data_source="bamboogle").rows
    assert (row.id, row.data_source, row.split) == ("test_0", "bamboogle", "test")
    assert row.ground_truth.target == ("William Howard Taft", "Taft")
    assert row.ground_truth.search_keys == () and row.ground_truth.support_docs == ()
    assert row.question.startswith("Who was president") and row.question in row.prompt[0]["content"]
    (number,) = convert_flashrag([("p:1", _flashrag_record(golden_answers=[1912, " "]))], data_source="popqa").rows
    assert number.ground_truth.target == ("1912",)


@pytest.mark.parametrize(("change", "reason"), [
    ({"golden_answers": "Taft"}, "'golden_answers' is not a list"),
    ({"golden_answers": [" "]}, "no non-empty answer"),
    ({"golden_answers": [["Taft"]]}, "not a string or number"),
    ({"question": ""}, "empty question"),
    ({"id": None}, "missing field 'id'"),
    ({"id": "test_0"}, "repeated id 'test_0'"),
])
def test_bad_flashrag_records_are_dropped_with_place_and_reason(change: dict, reason: str) -> None:
    out = convert_flashrag([("b.jsonl:1", _flashrag_record()), ("b.jsonl:2", _flashrag_record(**change))],
                           data_source="bamboogle")
    assert len(out.rows) == 1
    (problem,) = out.problems.problems
    assert problem.where == "b.jsonl:2" and reason in problem.reason


def test_paper_names_cover_the_papers_columns_and_old_spellings() -> None:
    assert [paper_name(s) for s in ("hotpotqa", "2wikimultihopqa", "musique", "bamboogle")] == [
        "HotpotQA", "2Wiki", "MuSiQue", "Bamboogle"]
    assert [paper_name(s) for s in ("nq", "triviaqa", "popqa", "2wiki", "HotpotQA")] == [
        "NQ", "TriviaQA", "PopQA", "2Wiki", "HotpotQA"]


def _write_jsonl(path: Path, records: list, bad_line: str | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    if bad_line is not None:
        lines.insert(1, bad_line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_prepare_data_bamboogle_preset_writes_test_rows_and_no_corpus(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    source = _write_jsonl(tmp_path / "test.jsonl", [_flashrag_record(id=f"q{i}") for i in range(3)], "{oops")
    out = tmp_path / "bamboogle"
    code = run_tool(prepare_main, ["data=bamboogle", f"data.input_path={source}", f"data.output_dir={out}"])
    assert code == 0
    assert "rows: train 0, validation 0, test 3; dropped rows: 1; corpus passages: 0" in capsys.readouterr().out
    rows = read_rows(out / "test.parquet")
    assert [r.id for r in rows] == ["q0", "q1", "q2"] and {r.data_source for r in rows} == {"bamboogle"}
    assert not (out / "corpus.jsonl").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dropped_examples"] == [f"{source}:2: not valid JSON (Expecting property name enclosed "
                                           "in double quotes)"]


def test_prepare_data_flashrag_takes_the_sets_name(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "popqa.jsonl", [_flashrag_record()])
    out = tmp_path / "popqa"
    code = run_tool(prepare_main, ["data=flashrag", "data.name=popqa", f"data.input_path={source}",
                                   f"data.output_dir={out}", "data.format=jsonl"])
    assert code == 0
    assert read_rows(out / "test.jsonl")[0].data_source == "popqa"
    with pytest.raises(ConfigError, match=r"data\.name: data=flashrag needs the set's name"):
        load_config(["data=flashrag", f"data.input_path={source}"])


def test_prepare_data_2wiki_preset_writes_rows_and_corpus(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "dev.json", [_twowiki_record(), _twowiki_record(_id="b", answer="")])
    out = tmp_path / "2wiki"
    code = run_tool(prepare_main, ["data=2wiki", f"data.input_path={source}", f"data.output_dir={out}",
                                   "data.split=test"])
    assert code == 0
    (row,) = read_rows(out / "test.parquet")
    passages = {p.id: p.contents for p in read_corpus_jsonl(out / "corpus.jsonl")}
    assert len(passages) == 3 and [passages[i] for i in row.support_doc_ids] == list(row.ground_truth.support_docs)
    assert json.loads((out / "summary.json").read_text())["dropped_examples"] == [f"{source}:2: empty answer"]


def test_training_a_reward_term_on_rows_without_its_inputs_is_refused(tmp_path: Path) -> None:
    flash = convert_flashrag([("b:1", _flashrag_record())], data_source="bamboogle").rows
    with pytest.raises(ConfigError) as info:
        check_reward_inputs(RewardConfig(), flash, "data/bamboogle/train.parquet")
    assert info.value.field_name == "reward.use_search_key"
    assert "search-key reward needs search_keys, but 1 of 1 rows in data/bamboogle/train.parquet" in str(info.value)
    assert "'bamboogle'" in str(info.value)
    with pytest.raises(ConfigError, match=r"reward.use_info_gain: the information-gain reward needs support_docs"):
        check_reward_inputs(RewardConfig(use_search_key=False), flash, "rows")
    check_reward_inputs(RewardConfig(use_search_key=False, use_info_gain=False), flash, "rows")  # outcome-only
    wiki = convert_twowiki([("f[0]", _twowiki_record())], split="train").rows
    check_reward_inputs(RewardConfig(), wiki, "rows")  # 2Wiki rows have both
    # the launch.train entry point reads the prepared training rows
    source = _write_jsonl(tmp_path / "train.jsonl", [_flashrag_record()])
    cfg = load_config(["data=flashrag", "data.name=nq", f"data.input_path={source}",
                       f"data.output_dir={tmp_path / 'nq'}", "data.split=train"])
    assert run_tool(prepare_main, ["data=flashrag", "data.name=nq", f"data.input_path={source}",
                                   f"data.output_dir={tmp_path / 'nq'}", "data.split=train"]) == 0
    with pytest.raises(ConfigError, match=r"reward\.use_search_key"):
        check_training_rows(cfg)
    check_training_rows(load_config(["data=flashrag", "data.name=nq", f"data.input_path={source}",
                                      f"data.output_dir={tmp_path / 'nq'}", "reward=outcome_only"]))


def test_real_hotpotqa_sample_through_the_2wiki_converter(shared_data: Path) -> None:
    # The 2Wiki format is HotpotQA's plus evidences; the HotpotQA sample has none, so its
    # rows key on the supporting titles, with the paragraphs the HotpotQA converter makes.
    path = shared_data / "hotpotqa_train100.json"
    wiki = convert_twowiki(iter_json_records(path, ProblemLog()), split="test")
    hotpot = convert_hotpotqa(iter_json_records(path, ProblemLog()), split="test")
    assert len(wiki.rows) == len(hotpot.rows) == 100 and not wiki.problems.problems
    for a, b in zip(wiki.rows, hotpot.rows, strict=True):
        assert a.ground_truth.search_keys == b.ground_truth.search_keys and a.num_hops == b.num_hops
        assert [d.split("\n")[0] for d in a.ground_truth.support_docs] == [
            d.split("\n")[0] for d in b.ground_truth.support_docs]
    assert len(wiki.passages) == len(hotpot.passages)


def test_real_musique_sample_as_a_flashrag_file(shared_data: Path, tmp_path: Path) -> None:
    # FlashRAG's own MuSiQue file is the official one reduced to id, question, golden_answers.
    records = json.loads((shared_data / "musique_train100.json").read_text())
    flash = [{"id": r["id"], "question": r["question"], "golden_answers": [r["answer"], *r["answer_aliases"]],
              "metadata": {"answerable": r["answerable"]}} for r in records]
    out = convert_flashrag(iter_json_records(_write_jsonl(tmp_path / "m.jsonl", flash), ProblemLog()),
                           data_source="musique")
    assert len(out.rows) == 100 and not out.problems.problems
    assert [r.ground_truth.target[0] for r in out.rows] == [r["answer"].strip() for r in records]
    assert paper_name(out.rows[0].data_source) == "MuSiQue"
