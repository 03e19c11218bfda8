"""Answer metrics, format check and search-key score, against hand-computed values."""

from __future__ import annotations

import doctest

import pytest

import workers.reward.info_gain
import workers.reward.metrics
import workers.reward.scoring
import workers.types
from workers.reward import (
    answer_f1,
    cover_exact_match,
    exact_match,
    extract_answer,
    format_ok,
    normalize_answer,
    search_key_score,
)


@pytest.mark.parametrize("module", [workers.reward.metrics, workers.reward.info_gain,
                                    workers.reward.scoring, workers.types])
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)  # type: ignore[arg-type]
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an  Apple,   a Day ", "apple day"),
    ("Theatre of the absurd", "theatre of absurd"),  # 'the' only as a whole word
    ("U.S.A.", "usa"),
    ("", ""),
])
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_answer_f1_hand_computed() -> None:
    # "big red apple" vs "red apple pie": 2 shared tokens, p = r = 2/3 -> F1 = 2/3.
    assert answer_f1("the big red apple", ["red apple pie"]) == pytest.approx(2 / 3)
    # Max over targets: the second target matches exactly.
    assert answer_f1("red apple", ["red apple pie", "Red Apple."]) == 1.0
    # Repeated tokens count with multiplicity: "paris paris" vs "paris": p = 1/2, r = 1.
    assert answer_f1("paris paris", ["paris"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("prediction, targets", [(None, ["x"]), ("x", []), ("", ["x"]),
                                                 ("the", ["a"])])
def test_answer_f1_zero_cases(prediction: str | None, targets: list[str]) -> None:
    assert answer_f1(prediction, targets) == 0.0


def test_exact_and_cover_match() -> None:
    assert exact_match("The Beatles", ["beatles", "Fab Four"]) == 1.0
    assert exact_match("The Beatles band", ["beatles"]) == 0.0
    assert exact_match(None, ["beatles"]) == 0.0
    assert cover_exact_match("it was the Beatles band", ["Beatles"]) == 1.0
    assert cover_exact_match("it was Queen", ["Beatles"]) == 0.0
    assert cover_exact_match("anything", ["The"]) == 0.0  # normalizes to empty: no match
    assert cover_exact_match(None, ["x"]) == 0.0


@pytest.mark.parametrize("text, ok, answer", [
    ("<think>t</think>\n<answer> Paris </answer>", True, "Paris"),
    ("<answer>Paris</answer>  \n\t", True, "Paris"),
    ("<answer>Lyon</answer> <search>q</search> <answer>Paris</answer>", True, "Paris"),
    ("<answer>Paris</answer> I hope this helps", False, "Paris"),  # text after </answer>
    ("<answer>Paris</answer><|im_end|>", False, "Paris"),
    ("The answer is Paris", False, None),  # no <answer> at all
    ("<answer> Paris", False, None),  # never closed
    ("Paris </answer>", False, None),  # never opened
    ("<answer></answer>", True, ""),
])
def test_format_ok_and_extract_answer(text: str, ok: bool, answer: str | None) -> None:
    assert format_ok(text) is ok
    assert extract_answer(text) == answer


GROUPS = [["capital of France", "France capital"], ["population of Paris"]]


@pytest.mark.parametrize("queries, expected", [
    # The examples: "weather" shares no token with any key, so it takes no group.
    (["capital of France", "weather"], 0.5),
    (["capital of France", "population of Paris", "weather"], 1.0),
    # A zero-F1 query first, too: it must not claim (or reset) group 0.
    (["weather", "capital of France"], 0.5),
    (["weather", "sunny"], 0.0),  # F1 0 everywhere: no group is hit
])
def test_search_key_zero_f1_queries_take_no_group(queries: list[str], expected: float) -> None:
    assert search_key_score(queries, GROUPS) == pytest.approx(expected)


def test_search_key_partial_match_hand_computed() -> None:
    # "population" vs "population of paris": p = 1, r = 1/3 -> F1 0.5; group 0 untouched.
    assert search_key_score(["population"], GROUPS) == pytest.approx(0.5 / 2)
    # Best alternative of a group counts: "capital" vs "France capital": p = 1, r = 1/2 -> 2/3
    # (vs "capital of France" only 1/2).
    assert search_key_score(["capital"], GROUPS) == pytest.approx((2 / 3) / 2)


def test_search_key_same_group_twice_keeps_the_last_f1() -> None:
    # Both queries go to group 0: first F1 1.0, then "capital" with F1 2/3. The last one wins.
    assert search_key_score(["capital of France", "capital"], GROUPS) == pytest.approx((2 / 3) / 2)
    # Reversed order: the exact query comes last and the group keeps 1.0.
    assert search_key_score(["capital", "capital of France"], GROUPS) == pytest.approx(0.5)


def test_search_key_ties_go_to_the_first_best_group() -> None:
    # "paris capital" vs group 0 ("France capital"): 1 shared token, p = r = 1/2 -> 1/2;
    # vs group 1 ("population of paris"): 1 shared token, p = 1/2, r = 1/3 -> 2/5. Group 0.
    assert search_key_score(["paris capital"], GROUPS) == pytest.approx(0.5 / 2)
    # An exact tie, F1 1/2 with both groups: only the first group takes the query.
    tied = [["red car"], ["red bus"]]
    assert search_key_score(["red"], tied) == pytest.approx((2 / 3) / 2)  # p = 1, r = 1/2
    assert search_key_score(["red", "blue bus"], tied) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # "red" takes group 0 (2/3); then "red car red" (vs "red car": p = 2/3, r = 1 -> 4/5;
    # vs "red bus": 2/5) takes group 0 again and replaces its score.
    assert search_key_score(["red", "red car red"], tied) == pytest.approx((4 / 5) / 2)


@pytest.mark.parametrize("queries, groups", [([], GROUPS), (["q"], []), ([], [])])
def test_search_key_empty_sides(queries: list[str], groups: list[list[str]]) -> None:
    assert search_key_score(queries, groups) == 0.0
