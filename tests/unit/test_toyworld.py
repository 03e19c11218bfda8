"""The synthetic world: deterministic, multi-hop, answerable only through its paragraphs."""

from __future__ import annotations

from collections import Counter

import pytest

from workers.config import ToyWorldConfig
from workers.data.musique import convert_musique
from workers.data.toyworld import generate

SMALL = ToyWorldConfig(num_people=120, num_films=40, num_companies=30, num_questions=300)


@pytest.fixture(scope="module")
def world() -> tuple[list[dict], list]:
    return generate(SMALL)


def test_same_seed_same_world_other_seed_other_world(world: tuple[list[dict], list]) -> None:
    records, passages = world
    again, passages_again = generate(SMALL)
    assert again == records and passages_again == passages
    other, _ = generate(ToyWorldConfig(**{**SMALL.__dict__, "seed": 1}))
    assert [r["question"] for r in other] != [r["question"] for r in records]


def test_questions_have_2_to_4_hops_and_all_three_splits(world: tuple[list[dict], list]) -> None:
    records, _ = world
    hops = Counter(len(r["question_decomposition"]) for r in records)
    assert set(hops) == {2, 3, 4} and min(hops.values()) > 30
    splits = Counter(r["split"] for r in records)
    assert set(splits) == {"train", "validation", "test"} and splits["train"] > splits["test"]


def test_each_step_is_answered_by_its_supporting_paragraph(world: tuple[list[dict], list]) -> None:
    records, _ = world
    for record in records:
        paragraphs = {p["idx"]: p for p in record["paragraphs"]}
        for step in record["question_decomposition"]:
            paragraph = paragraphs[step["paragraph_support_idx"]]
            assert paragraph["is_supporting"]
            assert step["answer"] in paragraph["paragraph_text"]
        assert record["answer"] == record["question_decomposition"][-1]["answer"]


def test_answers_cannot_be_read_off_the_question(world: tuple[list[dict], list]) -> None:
    records, _ = world
    for record in records:
        assert record["answer"].lower() not in record["question"].lower()
    answers = Counter(r["answer"] for r in records)
    assert answers.most_common(1)[0][1] / len(records) < 0.06  # no answer is a safe guess


def test_lookalike_names_exist_in_the_corpus(world: tuple[list[dict], list]) -> None:
    _, passages = world
    surnames = Counter(p.title.split(" ")[0] for p in passages if len(p.title.split(" ")) == 2)
    assert sum(1 for c in surnames.values() if c >= 2) >= 10


def test_split_is_by_start_entity(world: tuple[list[dict], list]) -> None:
    records, _ = world
    start_split: dict[str, set[str]] = {}
    for record in records:
        start = record["paragraphs"][0]["title"]
        start_split.setdefault(start, set()).add(record["split"])
    assert all(len(s) == 1 for s in start_split.values())


def test_records_flow_through_the_musique_converter(world: tuple[list[dict], list]) -> None:
    records, _ = world
    out = convert_musique([(f"toyworld[{i}]", r) for i, r in enumerate(records)], data_source="toyworld")
    assert len(out.rows) == len(records) and not out.problems
    row = out.rows[0]
    assert len(row.ground_truth.search_keys) == row.num_hops
    assert row.data_source == "toyworld"
