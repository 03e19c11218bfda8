"""The instruction given to the policy (StepSearch/Search-R1 protocol, DESIGN.md 1).

Stored in each dataset row as a chat message, so any tokenizer's chat template applies.
The rollout's agent loop uses the same tag names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SEARCH_INSTRUCTION = (
    "Answer the question below. Think step by step inside <think> and </think> whenever you "
    "receive new information. When you need a fact you do not know, write a search query as "
    "<search> query </search>; the search results will be returned between <information> and "
    "</information>. Search as many times as you need, one fact at a time. When you know the "
    "answer, write it inside <answer> and </answer> with no explanation, for example "
    "<answer> Paris </answer>.\nQuestion: {question}\n"
)
"""Default user message; ``{question}`` is filled in per row."""

SHORT_INSTRUCTION = (
    "Search with <search> query </search>; answer with <answer> answer </answer>.\nQuestion: {question}\n")
"""``data.instruction=short``: the protocol in one line, for policies trained from scratch (the quick
start), which cannot read the default's English and for which its ~90 tokens are compute on
every sequence."""

INSTRUCTIONS = {"search": SEARCH_INSTRUCTION, "short": SHORT_INSTRUCTION}
"""``data.instruction`` -> the user message template."""


def build_prompt(question: str, template: str = SEARCH_INSTRUCTION) -> list[dict[str, str]]:
    """The row's ``prompt`` field: one user message."""
    return [{"role": "user", "content": template.format(question=question.strip())}]


def encode_chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The token ids the policy sees for a row's ``prompt``: its chat template with the
    assistant turn opened. (``apply_chat_template`` returns a list, or with newer
    transformers a ``BatchEncoding``; both give plain ints here.)"""
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, Mapping) else getattr(ids, "input_ids", ids)
    return [int(i) for i in ids]
