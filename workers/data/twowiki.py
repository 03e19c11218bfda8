"""2WikiMultihopQA (official JSON or JSONL) -> StepSearch rows and corpus passages.

Runs in ``launch.prepare_data`` (driver, CPU). A record has ``_id, type, question,
context [[title, [sentences]]], supporting_facts [[title, sentence_id]], evidences
[[subject, relation, object]], answer``. Each evidence triple is one hop, so it gives one
search-key group: ``"subject relation"`` and, when the relation reads as a noun phrase,
``"relation of subject"`` (docs/data.md, 2WikiMultihopQA). A record without evidences
falls back to one group per supporting title, as HotpotQA does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workers.data.corpus import Passage, make_passage
from workers.data.musique import Converted, convert_by_id
from workers.data.problems import DataError
from workers.data.rows import QARow, make_row
from workers.data.sources import hash_split

DATA_SOURCE = "2wikimultihopqa"
"""The rows' ``data_source`` (FlashRAG's and Search-R1's name; the paper's column "2Wiki")."""

_TRAILING_PREPOSITIONS = frozenset("at by in of on for from to with as".split())


def evidence_key_group(subject: str, relation: str) -> list[str]:
    """Phrasings of the query that finds one evidence triple's fact.

    >>> evidence_key_group("Polish-Russian War", "director")
    ['Polish-Russian War director', 'director of Polish-Russian War']
    >>> evidence_key_group("Ann Lee", "educated at")
    ['Ann Lee educated at']
    """
    subject, relation = " ".join(subject.split()), " ".join(relation.split())
    keys = [f"{subject} {relation}"]
    words = relation.split()
    if words and words[-1].lower() not in _TRAILING_PREPOSITIONS:
        keys.append(f"{relation} of {subject}")
    return keys


def _paragraphs(context: Any) -> dict[str, Passage]:
    if not isinstance(context, list):
        raise DataError("'context' is not a list of [title, [sentences]]")
    by_title: dict[str, Passage] = {}
    for item in context:
        if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[1], list):
            raise DataError("a context entry is not [title, [sentences]]")
        text = " ".join(" ".join(str(s).split()) for s in item[1])
        by_title.setdefault(str(item[0]), make_passage(str(item[0]), text))
    return by_title


def _key_groups(evidences: Any) -> list[list[str]]:
    if not isinstance(evidences, list):
        raise DataError("'evidences' is not a list of [subject, relation, object]")
    groups: list[list[str]] = []
    for n, triple in enumerate(evidences):
        if (not isinstance(triple, (list, tuple)) or len(triple) != 3
                or not all(isinstance(x, str) and x.strip() for x in triple)):
            raise DataError(f"evidence {n} is not [subject, relation, object] of non-empty strings")
        group = evidence_key_group(triple[0], triple[1])
        if group not in groups:
            groups.append(group)
    return groups


def _targets(record: dict[str, Any], answer: str) -> list[str]:
    aliases = record.get("answer_aliases") or record.get("aliases") or []
    if not isinstance(aliases, list):
        raise DataError("'answer_aliases' is not a list")
    return list(dict.fromkeys([answer] + [str(a).strip() for a in aliases if str(a).strip()]))


def _record_to_row(record: dict[str, Any], data_source: str, index: int, split: str,
                   out: Converted) -> QARow:
    for key in ("_id", "question", "answer", "context", "supporting_facts"):
        if key not in record or record[key] is None:
            raise DataError(f"missing field '{key}'")
    answer = str(record["answer"]).strip()
    if not answer:
        raise DataError("empty answer")
    by_title = _paragraphs(record["context"])
    support_titles: list[str] = []
    for fact in record["supporting_facts"]:
        title = str(fact[0]) if isinstance(fact, (list, tuple)) and fact else ""
        if title not in by_title:
            raise DataError(f"supporting fact title {title!r} is not in the context")
        if title not in support_titles:
            support_titles.append(title)
    if not support_titles:
        raise DataError("no supporting facts")
    evidences = record.get("evidences")
    groups = _key_groups(evidences) if evidences else [[t] for t in support_titles]
    for passage in by_title.values():
        out.add_passage(passage)
    support = [by_title[t] for t in support_titles]
    return make_row(id=str(record["_id"]), data_source=data_source, question=str(record["question"]),
                    targets=_targets(record, answer), search_keys=groups,
                    support_docs=[p.contents for p in support],
                    support_doc_ids=[p.id for p in support], split=split, index=index,
                    num_hops=len(evidences) if evidences else len(support_titles))


def convert_twowiki(records: Iterable[tuple[str, Any]], *, data_source: str = DATA_SOURCE,
                    val_fraction: float = 0.0, test_fraction: float = 0.0,
                    split: str | None = None) -> Converted:
    """Convert ``(where, record)`` pairs; bad records are dropped into ``problems``.

    The split is ``split`` when given, else a hash of ``_id`` with the given fractions.
    """
    return convert_by_id(records, _record_to_row, data_source=data_source, val_fraction=val_fraction,
                         test_fraction=test_fraction, split=split)
