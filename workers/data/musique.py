"""MuSiQue (official format) -> StepSearch rows and corpus passages.

Also used for toyworld, whose generator writes MuSiQue-format records. Search keys: one
group per decomposition step, from the step's question with ``#k`` replaced by step k's
answer; relational steps (``A >> relation``) become keyword queries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from workers.data.corpus import Passage, make_passage
from workers.data.problems import DataError, ProblemLog
from workers.data.rows import QARow, make_row
from workers.data.sources import hash_split

_REF = re.compile(r"#(\d+)")
_LEADING_QUESTION_WORDS = frozenset(
    "what who whom whose which where when why how is was are were did does do in on at of "
    "the a an to for by from".split())


@dataclass
class Converted:
    """Rows and passages of one conversion; dropped records are in ``problems``."""

    rows: list[QARow] = field(default_factory=list)
    passages: dict[str, Passage] = field(default_factory=dict)
    problems: ProblemLog = field(default_factory=ProblemLog)

    def add_passage(self, passage: Passage) -> None:
        self.passages.setdefault(passage.id, passage)


def convert_by_id(records: Iterable[tuple[str, Any]], to_row: Callable[..., QARow], *, data_source: str,
                  val_fraction: float, test_fraction: float, split: str | None) -> Converted:
    """Rows of ``(where, record)`` pairs keyed by their ``_id`` (HotpotQA, 2Wiki): the split is
    ``split`` when given, else a hash of the id; bad records are dropped into ``problems``.
    ``to_row(record, data_source, index, split, converted)`` raises ``DataError`` for a bad one."""
    out = Converted()
    for where, record in records:
        if not isinstance(record, dict):
            out.problems.add(where, "record is not a JSON object")
            continue
        rid = str(record.get("_id", where))
        row_split = split or hash_split(rid, val_fraction, test_fraction)
        try:
            out.rows.append(to_row(record, data_source, len(out.rows), row_split, out))
        except DataError as exc:
            out.problems.add(where, str(exc))
    return out


def keyword_query(question: str) -> str:
    """Drop leading question words and the question mark.

    >>> keyword_query("Who was the first president of American Psychological Association ?")
    'first president of American Psychological Association'
    """
    words = question.replace("?", " ").split()
    while len(words) > 1 and words[0].lower() in _LEADING_QUESTION_WORDS:
        words.pop(0)
    return " ".join(words)


def resolve_references(question: str, answers: list[str], step: int) -> str:
    """Replace ``#k`` with the answer of earlier step k (1-based); refuse forward references."""
    def sub(match: re.Match[str]) -> str:
        k = int(match.group(1))
        if not 1 <= k < step:
            raise DataError(f"step {step} refers to #{k}, which is not an earlier step")
        return answers[k - 1]
    return " ".join(_REF.sub(sub, question).split())


def step_key_group(question: str) -> list[str]:
    """Phrasings of one sub-question's search key (the first is the canonical query).

    >>> step_key_group("Hello Love >> performer")
    ['Hello Love performer', 'performer of Hello Love']
    >>> step_key_group("Where was Lee Ann born?")
    ['Lee Ann born', 'Where was Lee Ann born']
    """
    if ">>" in question:
        subject, _, relation = question.partition(">>")
        subject, relation = subject.strip(), relation.strip()
        return [f"{subject} {relation}", f"{relation} of {subject}"]
    natural = question.replace("?", " ").strip()
    natural = " ".join(natural.split())
    keywords = keyword_query(natural)
    return [keywords, natural] if keywords != natural else [natural]


def _record_to_row(record: dict[str, Any], where: str, data_source: str, index: int,
                   split: str, out: Converted) -> QARow:
    for key in ("id", "question", "answer", "paragraphs", "question_decomposition"):
        if key not in record or record[key] is None:
            raise DataError(f"missing field '{key}'")
    if record.get("answerable") is False:
        raise DataError("unanswerable question")
    answer = str(record["answer"]).strip()
    if not answer:
        raise DataError("empty answer")
    paragraphs: dict[int, Passage] = {}
    supporting: list[int] = []
    for p in record["paragraphs"]:
        if not isinstance(p, dict) or "paragraph_text" not in p or "idx" not in p:
            raise DataError("a paragraph lacks 'idx' or 'paragraph_text'")
        paragraphs[int(p["idx"])] = make_passage(str(p.get("title", "")), str(p["paragraph_text"]))
        if p.get("is_supporting"):
            supporting.append(int(p["idx"]))
    steps = record["question_decomposition"]
    if not steps:
        raise DataError("empty question_decomposition")
    answers: list[str] = []
    key_groups: list[list[str]] = []
    support_order: list[int] = []
    for step_no, step in enumerate(steps, 1):
        question = resolve_references(str(step.get("question", "")), answers, step_no)
        key_groups.append(step_key_group(question))
        answers.append(str(step.get("answer", "")).strip())
        idx = step.get("paragraph_support_idx")
        if idx is not None:
            if int(idx) not in paragraphs:
                raise DataError(f"dangling paragraph_support_idx {idx} in step {step_no}")
            support_order.append(int(idx))
    support_order += [i for i in supporting if i not in support_order]
    if not support_order:
        raise DataError("no supporting paragraph")
    for passage in paragraphs.values():
        out.add_passage(passage)
    targets = list(dict.fromkeys([answer] + [str(a).strip() for a in record.get("answer_aliases") or []
                                             if str(a).strip()]))
    support = [paragraphs[i] for i in dict.fromkeys(support_order)]
    return make_row(id=str(record["id"]), data_source=data_source, question=str(record["question"]),
                    targets=targets, search_keys=key_groups,
                    support_docs=[p.contents for p in support],
                    support_doc_ids=[p.id for p in support], split=split, index=index,
                    num_hops=len(steps))


def convert_musique(records: Iterable[tuple[str, Any]], *, data_source: str = "musique",
                    val_fraction: float = 0.0, test_fraction: float = 0.0,
                    split: str | None = None, out: Converted | None = None) -> Converted:
    """Convert ``(where, record)`` pairs; bad records are dropped into ``out.problems``.

    The split is ``split`` when given (the record's own ``split`` field wins), else a
    deterministic hash of the record id with the given fractions.
    """
    out = out or Converted()
    for where, record in records:
        if not isinstance(record, dict):
            out.problems.add(where, "record is not a JSON object")
            continue
        rid = str(record.get("id", where))
        row_split = record.get("split") or split or hash_split(rid, val_fraction, test_fraction)
        try:
            row = _record_to_row(record, where, data_source, len(out.rows), row_split, out)
        except DataError as exc:
            out.problems.add(where, str(exc))
            continue
        out.rows.append(row)
    return out
