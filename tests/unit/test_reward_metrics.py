"""Answer metrics, format check and search-key score, against hand-computed values."""

from __future__ import annotations

import doctest

import pytest

import workers.reward.info_gain
import workers.reward.metrics
import workers.reward.scoring
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
                                    workers.reward.scoring])
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


GROUPS = [["capital of France", "French capital"], ["population of Paris"]]


def test_search_key_score_hand_computed() -> None:
    # Query 1 -> group 0 with F1 1 ("French capital"); query 2 -> group 1 with F1 1.
    assert search_key_score(["French capital", "population of Paris"], GROUPS) == 1.0
    # "population" vs "population of paris": p = 1, r = 1/3 -> 0.5; group 0 untouched.
    assert search_key_score(["population"], GROUPS) == pytest.approx(0.25)


def test_search_key_same_group_twice_keeps_the_last_f1() -> None:
    # Both queries go to group 0: first F1 1.0, then "capital" with F1 0.5 (vs "French
    # capital": p = 1, r = 1/2 -> 2/3 is the best alternative). The last one wins.
    assert search_key_score(["capital of France", "capital"], GROUPS) == pytest.approx((2 / 3) / 2)
    # Reversed order: the exact query comes last and the group keeps 1.0.
    assert search_key_score(["capital", "capital of France"], GROUPS) == pytest.approx(0.5)


def test_search_key_zero_f1_query_goes_to_the_first_group() -> None:
    # Literal rule: an unrelated query has best F1 0 everywhere, goes to group 0 (first
    # on ties) and overwrites its score with 0.
    assert search_key_score(["capital of France", "weather"], GROUPS) == 0.0


@pytest.mark.parametrize("queries, groups", [([], GROUPS), (["q"], []), ([], [])])
def test_search_key_empty_sides(queries: list[str], groups: list[list[str]]) -> None:
    assert search_key_score(queries, groups) == 0.0
