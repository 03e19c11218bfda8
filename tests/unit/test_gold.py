"""Gold trajectories for SFT: the agent loop's observation format, losses on actions only."""

from __future__ import annotations

from typing import Any

import pytest

from workers.data.rows import make_row
from workers.policy.tiny import train_tokenizer
from workers.rollout.agent_loop import LAST_TURN_NOTE, AgentLoop, LoopSettings, format_information, parse_action
from workers.rollout.gold import gold_episodes, gold_queries
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
