"""The agent loop's protocol and bookkeeping, driven by a scripted engine over a real tokenizer.

The engine here replays fixed action texts (our own seam, not vLLM), so every branch of
the loop is reached deterministically; the real engines are tested in integration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from workers.config import TinyModelConfig
from workers.policy.tiny import train_tokenizer
from workers.rollout.agent_loop import (
    INVALID_ACTION_NOTE,
    LAST_TURN_NOTE,
    AgentLoop,
    LoopSettings,
    format_information,
    parse_action,
)
from workers.rollout.engines import Generation, SamplingSettings
from workers.types import Document

WORDS = "Ann Lee was born in Paris . The film Foo was directed by Ann Lee . Doc Title information answer"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return train_tokenizer([WORDS] * 50, TinyModelConfig(vocab_size=400).vocab_size)


class ScriptedEngine:
    """Replays, per prompt (keyed by its first token ids), a list of action texts."""

    def __init__(self, tokenizer: Any, scripts: dict[int, list[str]]) -> None:
        self.tokenizer = tokenizer
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.calls: list[SamplingSettings] = []

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> list[Generation]:
        self.calls.append(settings)
        out = []
        for prompt in prompts:
            text = self.scripts[prompt[0]].pop(0)
            cut = min((text.find(s) + len(s) for s in settings.stop if s in text), default=len(text))
            ids = self.tokenizer(text[:cut], add_special_tokens=False)["input_ids"][: settings.max_tokens]
            reason = "stop" if cut < len(text) or text.endswith(settings.stop) else "length"
            out.append(Generation(tuple(ids), tuple(-0.5 for _ in ids), reason))
        return out

    def update_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        raise NotImplementedError


def search(queries: list[str], topk: int) -> list[list[Document]]:
    return [[Document(f"{q}-{i}", f"T{i}", f"text about {q}") for i in range(topk)] for q in queries]


def _loop(tokenizer: Any, scripts: dict[int, list[str]], **overrides: int) -> tuple[AgentLoop, ScriptedEngine]:
    settings = LoopSettings(**{"max_turns": 2, "max_response_tokens": 400, "max_obs_tokens": 120,
                               "max_action_tokens": 64, "topk": 2, **overrides})
    engine = ScriptedEngine(tokenizer, scripts)
    return AgentLoop(engine, tokenizer, search, settings), engine


def _prompt(tokenizer: Any, first: int) -> list[int]:
    return [first, *tokenizer("Question : who ?", add_special_tokens=False)["input_ids"]]


def test_search_then_answer_keeps_exact_tokens_and_spans(tokenizer: Any) -> None:
    actions = ["<think> a </think><search> Ann Lee </search> trailing", "<answer> Paris </answer>"]
    loop, _ = _loop(tokenizer, {1: actions})
    (ep,) = loop.run([_prompt(tokenizer, 1)], SamplingSettings(max_tokens=64))
    search_turn, answer_turn = ep.turns
    assert (search_turn.kind, search_turn.query, answer_turn.kind) == ("search", "Ann Lee", "answer")
    assert search_turn.doc_ids == ("Ann Lee-0", "Ann Lee-1")
    assert search_turn.doc_texts[0] == '"T0"\ntext about Ann Lee'
    action = tokenizer.decode(ep.response_ids[search_turn.action_start:search_turn.action_end])
    assert action == "<think> a </think><search> Ann Lee </search>"  # cut at the stop string
    obs = tokenizer.decode(ep.response_ids[search_turn.obs_start:search_turn.obs_end])
    assert obs == format_information(search(["Ann Lee"], 2)[0])
    assert search_turn.action_end == search_turn.obs_start and search_turn.obs_end == answer_turn.action_start
    assert all(m == 1 for m in ep.action_mask[search_turn.action_start:search_turn.action_end])
    assert all(m == 0 for m in ep.action_mask[search_turn.obs_start:search_turn.obs_end])
    assert all((lp != 0) == bool(m) for lp, m in zip(ep.logprobs, ep.action_mask, strict=True))
    assert answer_turn.action_end == len(ep.response_ids) and ep.searches == 1


def test_after_max_turns_the_policy_is_told_to_answer_without_search(tokenizer: Any) -> None:
    actions = ["<search> a </search>", "<search> b </search>", "<search> c </search><answer> x </answer>"]
    loop, engine = _loop(tokenizer, {1: actions}, max_turns=2)
    (ep,) = loop.run([_prompt(tokenizer, 1)], SamplingSettings(max_tokens=64))
    assert [t.kind for t in ep.turns] == ["search", "search", "answer"]
    assert engine.calls[-1].stop == ("</answer>",)  # the last generation cannot search
    last_obs = tokenizer.decode(ep.response_ids[ep.turns[1].obs_start:ep.turns[1].obs_end])
    assert last_obs.endswith(LAST_TURN_NOTE)


def test_invalid_action_gets_a_corrective_note_then_continues(tokenizer: Any) -> None:
    loop, _ = _loop(tokenizer, {1: ["I think Paris", "<answer> Paris </answer>"]})
    (ep,) = loop.run([_prompt(tokenizer, 1)], SamplingSettings(max_tokens=64))
    assert [t.kind for t in ep.turns] == ["invalid", "answer"]
    note = tokenizer.decode(ep.response_ids[ep.turns[0].obs_start:ep.turns[0].obs_end])
    assert note == INVALID_ACTION_NOTE


def test_observations_are_truncated_keeping_the_closing_tag(tokenizer: Any) -> None:
    loop, _ = _loop(tokenizer, {1: ["<search> Ann Lee </search>", "<answer> x </answer>"]}, max_obs_tokens=12)
    (ep,) = loop.run([_prompt(tokenizer, 1)], SamplingSettings(max_tokens=64))
    turn = ep.turns[0]
    assert turn.obs_end - turn.obs_start == 12
    assert tokenizer.decode(ep.response_ids[turn.obs_start:turn.obs_end]).endswith("</information>\n")


def test_batch_of_episodes_searches_together_and_respects_the_response_budget(tokenizer: Any) -> None:
    scripts = {1: ["<search> q1 </search>", "<answer> a </answer>"],
               2: ["<answer> b </answer>"],
               3: ["<search> q3 </search>", "<search> again </search>", "<answer> c </answer>"]}
    calls: list[list[str]] = []

    def recording_search(queries: list[str], topk: int) -> list[list[Document]]:
        calls.append(queries)
        return search(queries, topk)

    loop, _ = _loop(tokenizer, scripts)
    loop.search = recording_search
    eps = loop.run([_prompt(tokenizer, k) for k in (1, 2, 3)], SamplingSettings(max_tokens=64))
    assert calls[0] == ["q1", "q3"]  # one retrieval call for all active episodes
    assert [len(e.turns) for e in eps] == [2, 1, 3]
    tight, _ = _loop(tokenizer, {1: ["<search> Ann Lee </search>", "<answer> x </answer>"]}, max_response_tokens=20)
    (ep,) = tight.run([_prompt(tokenizer, 1)], SamplingSettings(max_tokens=64))
    assert len(ep.response_ids) <= 20 and ep.done


@pytest.mark.parametrize(("text", "expected"), [
    ("<search> a  b </search>", ("search", "a b")),
    ("<search>x</search> then <answer> y </answer>", ("answer", "y")),
    ("<answer> y </answer> more", ("invalid", None)),
    ("no tags", ("invalid", None)),
])
def test_parse_action(text: str, expected: tuple) -> None:
    assert parse_action(text) == expected


def test_doctests_of_the_loop_module() -> None:
    import doctest

    import workers.rollout.agent_loop as module

    assert doctest.testmod(module).failed == 0

