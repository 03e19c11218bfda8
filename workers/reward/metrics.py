"""Answer metrics, answer extraction, format check and the search-key score (DESIGN.md 4).

Pure functions on strings; they run wherever a ``RewardWorker`` runs (a reward actor on a
CPU, or the driver when ``reward.num_workers=0``) and in evaluation. Normalization is
SQuAD's: lower-case, drop ASCII punctuation, drop the articles a/an/the, fold spaces.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Sequence

logger = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
"""``str.translate`` table deleting ASCII punctuation (SQuAD normalization)."""
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower-case, strip punctuation, drop a/an/the, fold spaces.

    >>> normalize_answer("  The  Eiffel-Tower, Paris! ")
    'eiffeltower paris'
    >>> normalize_answer("An apple a day")
    'apple day'
    """
    text = text.lower().translate(PUNCTUATION_TABLE)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _token_f1(prediction_tokens: list[str], target_tokens: list[str]) -> float:
    """Token-level F1 of two normalized token lists (0 when they share no token)."""
    common = Counter(prediction_tokens) & Counter(target_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(target_tokens)
    return 2.0 * precision * recall / (precision + recall)


def answer_f1(prediction: str | None, targets: Sequence[str]) -> float:
    """Best SQuAD token F1 of ``prediction`` over ``targets``; 0 for None or no targets.

    >>> answer_f1("the city of Paris", ["Paris", "Lyon"])  # p = 1/3, r = 1
    0.5
    >>> answer_f1(None, ["Paris"]), answer_f1("Paris", [])
    (0.0, 0.0)
    """
    if prediction is None or not targets:
        return 0.0
    pred_tokens = normalize_answer(prediction).split()
    return max(_token_f1(pred_tokens, normalize_answer(t).split()) for t in targets)


def exact_match(prediction: str | None, targets: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals some normalized target, else 0.0.

    >>> exact_match("The Paris.", ["paris"]), exact_match("Paris, France", ["Paris"])
    (1.0, 0.0)
    """
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(t) for t in targets))


def cover_exact_match(prediction: str | None, targets: Sequence[str]) -> float:
    """1.0 when some normalized (non-empty) target is a substring of the normalized prediction.

    >>> cover_exact_match("Paris, France", ["paris"]), cover_exact_match("Lyon", ["Paris"])
    (1.0, 0.0)
    """
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    golds = (normalize_answer(t) for t in targets)
    return float(any(gold and gold in pred for gold in golds))


def _last_answer_span(response_text: str) -> tuple[int, int] | None:
    """``(content_start, close_start)`` of the last ``<answer>...</answer>`` block, or None."""
    close = response_text.rfind(ANSWER_CLOSE)
    if close < 0:
        return None
    opening = response_text.rfind(ANSWER_OPEN, 0, close)
    if opening < 0:
        return None
    return opening + len(ANSWER_OPEN), close


def extract_answer(response_text: str) -> str | None:
    """The stripped content of the last ``<answer>...</answer>`` block, or None.

    >>> extract_answer("<search> q </search> <answer> a </answer> <answer> Paris </answer>")
    'Paris'
    >>> extract_answer("<answer> unfinished") is None
    True
    """
    span = _last_answer_span(response_text)
    if span is None:
        return None
    return response_text[span[0]:span[1]].strip()


def format_ok(response_text: str) -> bool:
    """True when the response ends with an ``<answer>...</answer>`` block (then only whitespace).

    >>> format_ok("<think> x </think> <answer> Paris </answer>\\n")
    True
    >>> format_ok("<answer> Paris </answer> and more"), format_ok("Paris")
    (False, False)
    """
    span = _last_answer_span(response_text)
    if span is None:
        return False
    tail = response_text[span[1] + len(ANSWER_CLOSE):]
    return not tail.strip()


def search_key_score(queries: Sequence[str], key_groups: Sequence[Sequence[str]]) -> float:
    """StepSearch search-key score of a trajectory's queries (DESIGN.md 4).

    As the released ``step_search_keys_match``: each query starts assigned to no group and
    takes a group only for a strictly better F1 (against the group's best alternative), so
    ties go to the first best group and a query with F1 0 against every group is assigned
    to none. A group keeps the F1 of the *last* query assigned to it; the score is the sum
    over groups / number of groups. 0 when there are no queries or no groups.

    >>> groups = [["capital of France", "France capital"], ["population of Paris"]]
    >>> search_key_score(["capital of France", "population of Paris"], groups)
    1.0
    >>> search_key_score(["capital of France", "weather"], groups)  # "weather" hits no group
    0.5
    >>> search_key_score(["capital of France", "capital"], groups)  # group 0 ends at 2/3
    0.3333333333333333
    """
    if not queries or not key_groups:
        return 0.0
    group_scores = [0.0] * len(key_groups)
    for query in queries:
        best_group, best_f1 = -1, 0.0
        for index, group in enumerate(key_groups):
            f1 = answer_f1(query, list(group))
            if f1 > best_f1:
                best_group, best_f1 = index, f1
        if best_group >= 0:
            group_scores[best_group] = best_f1
    return sum(group_scores) / len(key_groups)
