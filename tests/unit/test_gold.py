"""Gold trajectories for SFT: the agent loop's observation format, losses on actions only."""

from __future__ import annotations

from typing import Any

import pytest

from workers.data.rows import make_row
from workers.policy.tiny import train_tokenizer
from workers.rollout.agent_loop import (
    LAST_TURN_NOTE,
    AgentLoop,
    Episode,
    LoopSettings,
    format_information,
    parse_action,
)
from workers.rollout.gold import first_action, gold_episodes, gold_queries
from workers.types import Document


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return train_tokenizer(["Ann Lee was born in Paris. The film Foo was directed by Ann Lee."] * 40, 400)


def _row(keys: list[list[str]]):
    return make_row(id="r1", data_source="toyworld", question="Where was the director of Foo born?",
                    targets=["Paris"], search_keys=keys, support_docs=[], support_doc_ids=[], split="train",
                    index=0, num_hops=len(keys))


def search(queries: list[str], topk: int) -> list[list[Document]]:
    return [[Document(f"{q}-{i}", f"T{i}", f"about {q}") for i in range(topk)] for q in queries]


def test_gold_episode_searches_each_key_then_answers(tokenizer: Any) -> None:
    loop = AgentLoop(None, tokenizer, search, LoopSettings(3, 400, 80, 32, 2))  # type: ignore[arg-type]
    row = _row([["Foo director", "director of Foo"], ["Ann Lee born"]])
    assert gold_queries(row) == ["Foo director", "Ann Lee born"]
    (ep,) = gold_episodes([row], [[1, 2, 3]], loop, search)
    kinds = [t.kind for t in ep.turns]
    assert kinds == ["search", "search", "answer"]
    first, second, answer = ep.turns
    assert second.query == "Ann Lee born" and second.obs_end == answer.action_start
    assert parse_action(tokenizer.decode(ep.response_ids[first.action_start:first.action_end])) == (
        "search", "Foo director")
    obs = tokenizer.decode(ep.response_ids[first.obs_start:first.obs_end])
    assert obs == format_information(search(["Foo director"], 2)[0])
    assert parse_action(tokenizer.decode(ep.response_ids[answer.action_start:answer.action_end])) == ("answer", "Paris")
    assert len(ep.logprobs) == len(ep.action_mask) == len(ep.response_ids)
    assert sum(ep.action_mask) == sum(t.action_end - t.action_start for t in ep.turns)  # loss on actions only
    assert first.doc_texts == ('"T0"\nabout Foo director', '"T1"\nabout Foo director')


def test_searches_stop_at_max_turns_with_the_last_turn_note(tokenizer: Any) -> None:
    loop = AgentLoop(None, tokenizer, search, LoopSettings(1, 400, 80, 32, 1))  # type: ignore[arg-type]
    (ep,) = gold_episodes([_row([["a"], ["b"]])], [[1]], loop, search)
    assert [t.kind for t in ep.turns] == ["search", "answer"]
    assert tokenizer.decode(ep.response_ids[ep.turns[0].obs_start:ep.turns[0].obs_end]).endswith(LAST_TURN_NOTE)


def test_first_action_keeps_the_prompt_and_the_first_search_only(tokenizer: Any) -> None:
    loop = AgentLoop(None, tokenizer, search, LoopSettings(3, 400, 80, 32, 2))  # type: ignore[arg-type]
    (ep,) = gold_episodes([_row([["Foo director"], ["Ann Lee born"]])], [[1, 2, 3]], loop, search)
    cut = first_action(ep)
    end = ep.turns[0].action_end
    assert cut.prompt_ids == [1, 2, 3] and cut.response_ids == ep.response_ids[:end]
    assert parse_action(tokenizer.decode(cut.response_ids)) == ("search", "Foo director")
    assert cut.action_mask == [1] * end and len(cut.logprobs) == end
    assert [(t.kind, t.obs_start, t.obs_end) for t in cut.turns] == [("search", end, end)]
    assert len(ep.turns) == 3 and len(ep.response_ids) > end  # the full episode is left as it was
    with pytest.raises(ValueError, match="no action"):
        first_action(Episode([1]))


def test_name_pool_draws_another_name_of_the_same_shape() -> None:
    import random

    from workers.data.renaming import NamePool

    pool = NamePool(["Vogupais University", "Cipava University", "Krebragei Holdings", "Brihithin Labs",
                     "The Bizitom", "The Sebiagi", "Nochail Peijariar", "Fiafou Zouvitial", "kaistejon", "drutou",
                     "Papai", "Vatugou"])
    assert NamePool.shape("Vogupais University") == ("A", "University") and NamePool.shape("drutou") == ("a",)
    rng = random.Random(0)
    assert pool.draw("Vogupais University", rng, set()) == "Cipava University"
    assert pool.draw("The Bizitom", rng, set()) == "The Sebiagi"
    assert pool.draw("kaistejon", rng, set()) == "drutou"
    assert pool.draw("Papai", rng, {"Vatugou"}) == "Papai"  # nothing free: the name stays
    assert pool.draw("Krebragei Holdings", rng, set()) == "Krebragei Holdings"  # no other "X Holdings"
    assert pool.draw("Nochail Peijariar", rng, set()) == "Fiafou Zouvitial"


def test_renaming_replaces_whole_names_longest_first() -> None:
    from workers.data.renaming import Renaming

    rename = Renaming({"Ann": "Zu", "Ann Lee": "Bo Ka", "Paris": "Tiva"})
    assert rename("Ann Lee met Ann in Paris, not Annex or Parisian.") == "Bo Ka met Zu in Tiva, not Annex or Parisian."
    assert Renaming({})("Ann Lee") == "Ann Lee"


def test_renamed_gold_episode_searches_real_names_and_shows_fresh_ones(tokenizer: Any) -> None:
    import random

    from workers.data.renaming import NamePool, Renaming, entity_names

    asked: list[str] = []

    def recording_search(queries: list[str], topk: int) -> list[list[Document]]:
        asked.extend(queries)
        return [[Document("p1", "Ann Lee", "Ann Lee was born in Paris.")] for _ in queries]

    row = make_row(id="r1", data_source="toyworld", question="Where was the director of Foo born?",
                   targets=["Paris"], search_keys=[["The Foo director"], ["Ann Lee born"]],
                   support_docs=['"The Foo"\nThe Foo was directed by Ann Lee.',
                                 '"Ann Lee"\nAnn Lee was born in Paris.'],
                   support_doc_ids=["p0", "p1"], split="train", index=0, num_hops=2)
    assert entity_names(row) == ["The Foo", "Ann Lee", "Paris"]
    pool = NamePool(["The Foo", "The Bar", "The Baz", "Ann Lee", "Bo Ka", "Paris", "Tiva", "Lima"])
    rename = Renaming.draw(row, pool, random.Random(3))
    fresh = {name: rename(name) for name in entity_names(row)}
    assert all(new != old for old, new in fresh.items()) and fresh["The Foo"] in ("The Bar", "The Baz")
    assert fresh["Ann Lee"] == "Bo Ka" and fresh["Paris"] in ("Tiva", "Lima")
    shown = rename.row(row)
    assert shown.ground_truth.target == (fresh["Paris"],)
    assert shown.ground_truth.search_keys[1] == (f"{fresh['Ann Lee']} born",)
    loop = AgentLoop(None, tokenizer, recording_search, LoopSettings(3, 400, 80, 32, 1))  # type: ignore[arg-type]
    (ep,) = gold_episodes([row], [[1]], loop, recording_search, [rename])
    assert asked == ["The Foo director", "Ann Lee born"]  # the retriever sees the real names
    _, second, answer = ep.turns
    assert second.query == f"{fresh['Ann Lee']} born" and second.doc_ids == ("p1",)
    text = tokenizer.decode(ep.response_ids)
    assert "Ann Lee" not in text and "Paris" not in text
    assert f"{fresh['Ann Lee']} was born in {fresh['Paris']}." in text
    assert parse_action(tokenizer.decode(ep.response_ids[answer.action_start:answer.action_end])) == (
        "answer", fresh["Paris"])
    with pytest.raises(ValueError, match="renamings"):
        gold_episodes([row], [[1]], loop, recording_search, [])


def test_an_early_episode_stops_after_the_first_search_and_answers_what_it_found(tokenizer: Any) -> None:
    from workers.rollout.gold import early_answer

    row = make_row(id="r1", data_source="toyworld", question="Which country was the director of Foo born in?",
                   targets=["France"], search_keys=[["Foo director"], ["Ann Lee born"], ["Paris country"]],
                   support_docs=['"Foo"\nFoo was directed by Ann Lee.', '"Ann Lee"\nAnn Lee was born in Paris.',
                                 '"Paris"\nParis is a city in France.'],
                   support_doc_ids=["p0", "p1", "p2"], split="train", index=0, num_hops=3)
    assert early_answer(row) == "Ann Lee"
    assert early_answer(_row([["Foo director"]])) is None  # one hop: nothing to skip
    assert early_answer(_row([["Foo director"], ["Ann Lee born"]])) is None  # no support paragraphs
    loop = AgentLoop(None, tokenizer, search, LoopSettings(3, 400, 80, 32, 1))  # type: ignore[arg-type]
    early, full, no_docs = gold_episodes([row, row, _row([["a"], ["b"]])], [[1], [1], [1]], loop, search,
                                         early=[True, False, True])
    assert [t.kind for t in early.turns] == ["search", "answer"] and early.turns[0].query == "Foo director"
    assert parse_action(tokenizer.decode(early.response_ids[early.turns[1].action_start:])) == ("answer", "Ann Lee")
    assert [t.kind for t in full.turns] == ["search", "search", "search", "answer"]
    assert [t.kind for t in no_docs.turns] == ["search", "search", "answer"]  # no early answer: complete
    with pytest.raises(ValueError, match="early flags"):
        gold_episodes([row], [[1]], loop, search, early=[True, False])
