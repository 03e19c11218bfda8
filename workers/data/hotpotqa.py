"""HotpotQA (official format) -> StepSearch rows and corpus passages.

HotpotQA has no question decomposition, so each search-key group is the title of one
supporting paragraph (the entity a good query names); see docs/data.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workers.data.corpus import Passage, make_passage
from workers.data.musique import Converted, convert_by_id
from workers.data.problems import DataError
from workers.data.rows import QARow, make_row
from workers.data.sources import hash_split


def _record_to_row(record: dict[str, Any], data_source: str, index: int, split: str,
                   out: Converted) -> QARow:
    for key in ("_id", "question", "answer", "context", "supporting_facts"):
        if key not in record or record[key] is None:
            raise DataError(f"missing field '{key}'")
    answer = str(record["answer"]).strip()
    if not answer:
        raise DataError("empty answer")
    by_title: dict[str, Passage] = {}
    for item in record["context"]:
        if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[1], list):
            raise DataError("a context entry is not [title, [sentences]]")
        title, sentences = str(item[0]), item[1]
        by_title[title] = make_passage(title, "".join(str(s) for s in sentences))
    support_titles: list[str] = []
    for fact in record["supporting_facts"]:
        title = str(fact[0]) if isinstance(fact, (list, tuple)) and fact else ""
        if title not in by_title:
            raise DataError(f"supporting fact title {title!r} is not in the context")
        if title not in support_titles:
            support_titles.append(title)
    if not support_titles:
        raise DataError("no supporting facts")
    for passage in by_title.values():
        out.add_passage(passage)
    support = [by_title[t] for t in support_titles]
    return make_row(id=str(record["_id"]), data_source=data_source, question=str(record["question"]),
                    targets=[answer], search_keys=[[t] for t in support_titles],
                    support_docs=[p.contents for p in support],
                    support_doc_ids=[p.id for p in support], split=split, index=index,
                    num_hops=len(support_titles))


def convert_hotpotqa(records: Iterable[tuple[str, Any]], *, data_source: str = "hotpotqa",
                     val_fraction: float = 0.0, test_fraction: float = 0.0,
                     split: str | None = None) -> Converted:
    """Convert ``(where, record)`` pairs; bad records are dropped into ``problems``."""
    return convert_by_id(records, _record_to_row, data_source=data_source, val_fraction=val_fraction,
                         test_fraction=test_fraction, split=split)
