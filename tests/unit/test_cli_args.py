"""Tool arguments beside Hydra overrides: ``split_tool_args`` and the evaluate/ask front ends."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import launch.cli
from launch import ask, evaluate
from launch.cli import split_tool_args
from launch.evaluate import EvalArgs, find_hf_model, parse_eval_args, wants_ray
from workers.config import Config, ConfigError

NAMES = ("checkpoint", "split", "limit", "output", "question")


def test_tool_keys_are_taken_and_overrides_keep_their_order() -> None:
    argv = ["rollout.engine=hf", "checkpoint=runs/a", "data=musique", "limit=5", "retrieval.topk=2"]
    tool_args, overrides = split_tool_args(argv, NAMES)
    assert tool_args == {"checkpoint": "runs/a", "limit": "5"}
    assert overrides == ["rollout.engine=hf", "data=musique", "retrieval.topk=2"]


def test_values_keep_their_equals_signs_and_spaces_and_the_last_one_wins() -> None:
    argv = ["question=Is 1+1=2 here?", "split=validation", "split=test", "output="]
    tool_args, overrides = split_tool_args(argv, NAMES)
    assert tool_args == {"question": "Is 1+1=2 here?", "split": "test", "output": ""}
    assert overrides == []


def test_everything_else_goes_to_hydra_unchanged() -> None:
    # Near misses stay overrides, so Hydra reports them (a nested key, a typo, a bare word, flags).
    argv = ["model.checkpoint=x", "checkpoints=y", "checkpoint", "+limit=3", "--help", "-m"]
    tool_args, overrides = split_tool_args(argv, NAMES)
    assert tool_args == {}
    assert overrides == argv


def test_doctest_of_the_helper() -> None:
    assert doctest.testmod(launch.cli).failed == 0


def test_eval_args_are_typed_and_checked() -> None:
    assert parse_eval_args({}) == EvalArgs()
    assert parse_eval_args({"checkpoint": "d", "split": "validation", "limit": "7", "output": "o.jsonl",
                            "batch_size": "4"}) == EvalArgs("d", "validation", 7, "o.jsonl", 4)
    for key, value in (("limit", "zero"), ("limit", "0"), ("batch_size", "-1"), ("split", "../x")):
        with pytest.raises(ConfigError) as info:
            parse_eval_args({key: value})
        assert info.value.field_name == key


def test_ray_only_when_the_command_line_asks_for_rollout_actors() -> None:
    cfg = Config()  # the dataclass default has rollout.num_workers=1, like the cpu preset
    assert not wants_ray([], cfg)
    assert wants_ray(["rollout.num_workers=1"], cfg)
    cfg.rollout.num_workers = 0
    assert not wants_ray(["rollout.num_workers=0"], cfg)


def test_checkpoint_may_be_a_model_dir_a_training_checkpoint_or_a_run_dir(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert find_hf_model(model) == model
    step = tmp_path / "run" / "checkpoints" / "step_000010"
    (step / "learner" / "hf").mkdir(parents=True)
    (step / "learner" / "hf" / "config.json").write_text("{}")
    assert find_hf_model(step) == step / "learner" / "hf"
    from workers.tracking import COMPLETE_MARKER

    (step / COMPLETE_MARKER).write_text("ok\n")
    assert find_hf_model(tmp_path / "run") == step / "learner" / "hf"
    assert find_hf_model(tmp_path / "nothing") is None


def test_bad_tool_arguments_and_unknown_keys_exit_2_naming_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.cli(["limit=many"]) == 2
    assert "limit: must be a positive integer" in capsys.readouterr().err
    assert evaluate.cli(["checkpoint=/no/such/dir"]) == 2
    assert "checkpoint: /no/such/dir holds no Hugging Face model" in capsys.readouterr().err
    assert evaluate.cli(["limit=2", "rollout.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert ask.cli(["rollout.engine=hf"]) == 2
    assert "question: required" in capsys.readouterr().err


def test_help_names_the_tool_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"{key}=" in out for key in ("checkpoint", "split", "limit", "output", "batch_size"))
    assert ask.cli(["--help"]) == 0
    assert "question=" in capsys.readouterr().out


def test_the_table_has_a_line_per_source_and_one_for_all() -> None:
    from workers.evaluation import evaluate_sample, summarize
    from workers.types import GroundTruth, Turn

    answered = evaluate_sample("a#0", "musique", GroundTruth(("Paris",)), "<answer> Paris </answer>",
                               [Turn("answer", 0, 1, 1, 1)])
    silent = evaluate_sample("b#0", "hotpotqa", GroundTruth(("Rome",)), "???", [Turn("invalid", 0, 1, 1, 1)])
    lines = evaluate.format_table(summarize([answered, silent])).splitlines()
    assert lines[0].split() == ["source", "n", "EM", "F1", "cover-EM", "searches", "gold-hit", "redundancy",
                                "format", "empty"]
    assert lines[1].split() == ["hotpotqa", "1", *["0.000"] * 8]
    assert lines[2].split() == ["musique", "1", "1.000", "1.000", "1.000", "0.000", "0.000", "0.000", "1.000",
                                "0.000"]
    assert lines[3].split()[:3] == ["all", "2", "0.500"]
    three_hop = evaluate_sample("c#0", "musique", GroundTruth(("Oslo",), num_hops=3), "<answer> Oslo </answer>",
                                [Turn("answer", 0, 1, 1, 1)])
    lines = evaluate.format_table(summarize([answered, silent, three_hop])).splitlines()
    assert [line.split()[:3] for line in lines[1:]] == [
        ["hotpotqa", "1", "0.000"], ["musique", "2", "1.000"], ["3-hop", "1", "1.000"], ["all", "3", "0.667"]]


def test_the_trajectory_print_shows_text_query_titles_and_answer() -> None:
    from workers.evaluation import evaluate_sample
    from workers.types import GroundTruth, Turn

    turns = [Turn("search", 0, 1, 1, 2, "capital of France", ("p1", "p2"),
                  ('"Paris"\nParis is the capital.', '"Lyon"\nLyon is a city.')),
             Turn("invalid", 2, 3, 3, 4), Turn("answer", 4, 5, 5, 5)]
    texts = ["<think> find it </think>\n<search> capital of France </search>", "\n\n", "<answer> Paris </answer>"]
    record = evaluate_sample("ask#0", "ask", GroundTruth(()), "... <answer> Paris </answer>", turns,
                             "Capital of France?", texts)
    assert ask.format_trajectory(record).splitlines() == [
        "[turn 1] search",
        "    <think> find it </think>",
        "    <search> capital of France </search>",
        "  query: capital of France",
        "  retrieved: Paris | Lyon",
        "[turn 2] invalid",
        "    (blank: 2 whitespace characters)",
        "[turn 3] answer",
        "    <answer> Paris </answer>",
        "answer: Paris",
    ]
    unanswered = evaluate_sample("ask#0", "ask", GroundTruth(()), "", [])
    assert ask.format_trajectory(unanswered).splitlines()[-1].startswith("answer: (none")


def test_a_missing_corpus_fails_before_any_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text("{}")  # not loadable: the check must come first
    assert ask.cli(["question=x", f"checkpoint={tmp_path}", f"data.output_dir={tmp_path / 'none'}"]) == 2
    assert "retrieval.corpus_path: " in capsys.readouterr().err
