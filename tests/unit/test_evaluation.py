"""Evaluation scoring on hand-built trajectories with hand-computed expected values."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest

import workers.evaluation as evaluation
from workers.evaluation import (
    EVAL_COUNT,
    EVAL_COVER_EM,
    EVAL_EM,
    EVAL_EMPTY_ANSWER,
    EVAL_F1,
    EVAL_FORMAT_OK,
    EVAL_GOLD_HIT,
    EVAL_REDUNDANCY,
    EVAL_SEARCHES,
    METRIC_KEYS,
    evaluate_trajectories,
    summarize,
)
from workers.rollout.agent_loop import INVALID_ACTION_NOTE
from workers.types import GroundTruth, TrajectoryBatch, Turn

G1, G2, G3, G4 = ('"Paris"\nParis is the capital of France.', '"France"\nFrance is in Europe.',
                  '"Lyon"\nLyon is on the Rhone.', '"Berlin"\nBerlin is in Germany.')
OTHER, OTHER2 = '"Rome"\nRome is in Italy.', '"Oslo"\nOslo is in Norway.'


def search(start: int, query: str, docs: list[tuple[str, str]]) -> Turn:
    """A search turn with action tokens [start, start+2) and observation [start+2, start+4)."""
    return Turn("search", start, start + 2, start + 2, start + 4, query,
                tuple(i for i, _ in docs), tuple(t for _, t in docs))


def make_batch(samples: list[tuple[str, GroundTruth, str, tuple[Turn, ...]]]) -> TrajectoryBatch:
    """``samples``: (data_source, ground truth, response text, turns); response ids are 0..T-1."""
    b, t = len(samples), 12
    return TrajectoryBatch(
        prompt_ids=np.zeros((b, 1), np.int32), prompt_lengths=np.ones(b, np.int32),
        response_ids=np.tile(np.arange(t, dtype=np.int32), (b, 1)), response_lengths=np.full(b, t, np.int32),
        action_mask=np.ones((b, t), np.int8), rollout_logprobs=np.zeros((b, t), np.float32),
        turns=tuple(s[3] for s in samples), response_text=tuple(s[2] for s in samples),
        sample_ids=tuple(f"q{i}#0" for i in range(b)), ground_truth=tuple(s[1] for s in samples),
        data_sources=tuple(s[0] for s in samples), policy_version=0)


# A: two searches, the first hits gold (G1), the second repeats p2: gold-hit 1/2, redundancy 1/4.
SAMPLE_A = ("musique", GroundTruth(("Paris",), support_docs=(G1, G2)),
            "<search> capital </search> ... <search> more </search> ... <answer> the Paris </answer>",
            (search(0, "capital of France", [("p1", G1), ("p2", OTHER)]),
             search(4, "more", [("p2", OTHER), ("p3", OTHER2)]),
             Turn("answer", 8, 10, 10, 10)))
# B: one search, no gold; "Lyon France" vs "Lyon": EM 0, F1 2/3 (p 1/2, r 1), cover-EM 1.
SAMPLE_B = ("musique", GroundTruth(("Lyon",), support_docs=(G3,)),
            "<search> city </search> ... <answer> Lyon France </answer>\n",
            (search(0, "city", [("p4", OTHER)]), Turn("answer", 4, 6, 6, 6)))
# C: an invalid action; the inserted note itself contains "<answer> and </answer>": no answer.
SAMPLE_C = ("hotpotqa", GroundTruth(("and",), support_docs=(G4,)),
            "gibberish" + INVALID_ACTION_NOTE + "more gibberish",
            (Turn("invalid", 0, 2, 2, 4), Turn("invalid", 4, 6, 6, 6)))


def test_per_sample_records() -> None:
    result = evaluate_trajectories(make_batch([SAMPLE_A, SAMPLE_B, SAMPLE_C]))
    a, b, c = result.records
    assert (a.prediction, a.em, a.f1, a.cover_em, a.format_ok) == ("the Paris", 1.0, 1.0, 1.0, True)
    assert (a.num_searches, a.gold_hit, a.redundancy) == (2, 0.5, 0.25)
    assert (b.prediction, b.em, b.cover_em, b.format_ok) == ("Lyon France", 0.0, 1.0, True)
    assert b.f1 == pytest.approx(2 / 3)
    assert (b.num_searches, b.gold_hit, b.redundancy) == (1, 0.0, 0.0)
    # The note's "<answer> and </answer>" must not count, even though "and" is the target.
    assert (c.prediction, c.em, c.f1, c.cover_em, c.format_ok) == (None, 0.0, 0.0, 0.0, False)
    assert (c.num_searches, c.gold_hit, c.redundancy) == (0, None, None)
    assert [r.sample_id for r in result.records] == ["q0#0", "q1#0", "q2#0"]


def test_aggregates_overall_and_per_source() -> None:
    result = evaluate_trajectories(make_batch([SAMPLE_A, SAMPLE_B, SAMPLE_C]))
    expected = {EVAL_EM: 1 / 3, EVAL_F1: (1 + 2 / 3) / 3, EVAL_COVER_EM: 2 / 3, EVAL_SEARCHES: 1.0,
                EVAL_GOLD_HIT: 1 / 3,  # 1 hitting search of 3
                EVAL_REDUNDANCY: 1 / 5,  # 1 repeated document of 5 retrieved
                EVAL_FORMAT_OK: 2 / 3, EVAL_EMPTY_ANSWER: 0.0, EVAL_COUNT: 3.0}
    assert result.overall == pytest.approx(expected)
    assert list(result.by_source) == ["hotpotqa", "musique"]
    assert result.by_source["musique"] == pytest.approx(
        {EVAL_EM: 0.5, EVAL_F1: (1 + 2 / 3) / 2, EVAL_COVER_EM: 1.0, EVAL_SEARCHES: 1.5, EVAL_GOLD_HIT: 1 / 3,
         EVAL_REDUNDANCY: 1 / 5, EVAL_FORMAT_OK: 1.0, EVAL_EMPTY_ANSWER: 0.0, EVAL_COUNT: 2.0})
    assert result.by_source["hotpotqa"] == {**dict.fromkeys(METRIC_KEYS, 0.0), EVAL_COUNT: 1.0}
    flat = result.metrics()
    assert flat["eval/em"] == pytest.approx(1 / 3) and flat["eval/musique/em"] == 0.5
    assert flat["eval/hotpotqa/count"] == 1.0 and len(flat) == 3 * len(METRIC_KEYS)


def test_aggregates_per_hop_count_when_rows_know_it() -> None:
    def hops(sample: tuple, n: int) -> tuple:
        source, truth, *rest = sample
        return (source, GroundTruth(truth.target, support_docs=truth.support_docs, num_hops=n), *rest)

    samples = [hops(SAMPLE_A, 2), hops(SAMPLE_B, 3), hops(SAMPLE_B, 2), SAMPLE_C]  # C: hop count unknown (0)
    result = evaluate_trajectories(make_batch(samples))
    assert [r.num_hops for r in result.records] == [2, 3, 2, 0]
    assert list(result.by_hops) == [2, 3]
    assert result.by_hops[2][EVAL_EM] == 0.5 and result.by_hops[2][EVAL_COUNT] == 2.0
    assert result.by_hops[2][EVAL_F1] == pytest.approx((1 + 2 / 3) / 2)
    assert result.by_hops[3][EVAL_EM] == 0.0 and result.by_hops[3][EVAL_COUNT] == 1.0
    flat = result.metrics()
    assert flat["eval/2hop/em"] == 0.5 and flat["eval/3hop/count"] == 1.0 and "eval/0hop/em" not in flat
    assert json.loads(json.dumps(result.records[1].to_json()))["num_hops"] == 3
    assert summarize(result.records).by_hops == result.by_hops


def test_an_empty_answer_block_is_counted_apart_from_no_answer() -> None:
    empty = ("musique", GroundTruth(("Paris",)), "<search> q </search> ... <answer>  </answer>",
             (search(0, "q", [("p1", G1)]), Turn("answer", 4, 6, 6, 6)))
    result = evaluate_trajectories(make_batch([empty, SAMPLE_A, SAMPLE_C]))
    assert [r.empty_answer for r in result.records] == [True, False, False]  # C never answered: not "empty"
    assert result.records[0].prediction == "" and result.records[0].format_ok
    assert result.overall[EVAL_EMPTY_ANSWER] == pytest.approx(1 / 3)


def test_gold_hit_skips_samples_without_support_passages() -> None:
    no_support = ("musique", GroundTruth(("x",)), "<answer> x </answer>",
                  (search(0, "q", [("p9", G1)]), search(4, "q2", [("p8", G2)]), Turn("answer", 8, 9, 9, 9)))
    result = evaluate_trajectories(make_batch([SAMPLE_A, no_support]))
    assert result.records[1].gold_hit is None
    assert result.records[1].turns[0]["gold_hit"] is None
    assert result.overall[EVAL_GOLD_HIT] == 0.5  # A's 1 of 2; the two unsupported searches do not count
    assert result.overall[EVAL_SEARCHES] == 2.0


def test_records_are_json_with_the_full_trajectory() -> None:
    def decode(ids: list[int]) -> str:
        return "".join(chr(ord("a") + i) for i in ids)

    result = evaluate_trajectories(make_batch([SAMPLE_A, SAMPLE_C]), questions=["Capital?", None], decode=decode)
    record = json.loads(json.dumps(result.records[0].to_json()))
    assert record["question"] == "Capital?" and record["targets"] == ["Paris"]
    assert record["response_text"] == SAMPLE_A[2] and record["gold_hit"] == 0.5
    first, second, answer = record["turns"]
    assert first == {"kind": "search", "text": "ab", "query": "capital of France", "doc_ids": ["p1", "p2"],
                     "doc_titles": ["Paris", "Rome"], "gold_hit": True}
    assert second["gold_hit"] is False and second["text"] == "ef"
    assert answer == {"kind": "answer", "text": "ij"}
    assert json.loads(json.dumps(result.records[1].to_json()))["prediction"] is None
    with pytest.raises(ValueError, match="2 questions for a batch of 1"):
        evaluate_trajectories(make_batch([SAMPLE_A]), questions=["a", "b"])


def test_summarize_of_chunks_equals_one_pass() -> None:
    whole = evaluate_trajectories(make_batch([SAMPLE_A, SAMPLE_B, SAMPLE_C]))
    parts = [evaluate_trajectories(make_batch([SAMPLE_A])), evaluate_trajectories(make_batch([SAMPLE_B, SAMPLE_C]))]
    merged = summarize([r for p in parts for r in p.records])
    assert merged.overall == pytest.approx(whole.overall)
    assert merged.by_source.keys() == whole.by_source.keys()
    for source, values in whole.by_source.items():
        assert merged.by_source[source] == pytest.approx(values)


def test_nothing_to_evaluate_gives_zeros() -> None:
    result = summarize([])
    assert result.overall == dict.fromkeys(METRIC_KEYS, 0.0) and result.by_source == {}


def test_doctests() -> None:
    assert doctest.testmod(evaluation).failed == 0
