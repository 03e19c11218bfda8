"""FlashRAG-format question sets (Bamboogle, NQ, TriviaQA, PopQA, ...) -> evaluation rows.

Runs in ``launch.prepare_data`` (driver, CPU). A FlashRAG file is JSONL of ``{"id",
"question", "golden_answers", "metadata"?}``. Such a set ships no corpus, search keys or
support documents: its rows have ``target = golden_answers`` and ``data_source`` = the
set's name, and evaluation searches ``retrieval.corpus_path`` or ``retrieval.index_dir``
(wiki-18). Training with a reward term that needs the missing fields is refused
(``workers.data.reward_inputs``).

``PAPER_COLUMNS`` maps each ``data_source`` to its column name in the StepSearch and
Search-R1 tables, which ``launch.evaluate eval_sets=[...]`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workers.data.musique import Converted
from workers.data.problems import DataError
from workers.data.rows import QARow, make_row

PAPER_COLUMNS = {
    "hotpotqa": "HotpotQA", "2wikimultihopqa": "2Wiki", "musique": "MuSiQue", "bamboogle": "Bamboogle",
    "nq": "NQ", "triviaqa": "TriviaQA", "popqa": "PopQA",
}
"""``data_source`` -> the paper's column. HotpotQA and MuSiQue rows keep the names they always had."""

_ALIASES = {"2wiki": "2wikimultihopqa", "2wikimqa": "2wikimultihopqa", "hotpot_qa": "hotpotqa",
            "natural_questions": "nq", "trivia_qa": "triviaqa"}


def paper_name(data_source: str) -> str:
    """The paper's column for a ``data_source`` (other spellings too); unknown names unchanged.

    >>> paper_name("2wikimultihopqa"), paper_name("2Wiki"), paper_name("MuSiQue"), paper_name("toyworld")
    ('2Wiki', '2Wiki', 'MuSiQue', 'toyworld')
    """
    key = data_source.strip().lower()
    return PAPER_COLUMNS.get(_ALIASES.get(key, key), data_source)


def _golden_answers(value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list):
        raise DataError("'golden_answers' is not a list of answers")
    answers = [str(a).strip() for a in value if isinstance(a, (str, int, float)) and not isinstance(a, bool)]
    if len(answers) != len(value):
        raise DataError("'golden_answers' holds a value that is not a string or number")
    answers = [a for a in answers if a]
    if not answers:
        raise DataError("'golden_answers' has no non-empty answer")
    return list(dict.fromkeys(answers))


def _record_to_row(record: dict[str, Any], data_source: str, index: int, split: str) -> QARow:
    for key in ("id", "question", "golden_answers"):
        if key not in record or record[key] is None:
            raise DataError(f"missing field '{key}'")
    question = str(record["question"]).strip()
    if not question:
        raise DataError("empty question")
    return make_row(id=str(record["id"]), data_source=data_source, question=question,
                    targets=_golden_answers(record["golden_answers"]), search_keys=[],
                    support_docs=[], support_doc_ids=[], split=split, index=index, num_hops=0)


def convert_flashrag(records: Iterable[tuple[str, Any]], *, data_source: str,
                     split: str = "test") -> Converted:
    """Convert ``(where, record)`` pairs into rows of one split; bad records (and repeated
    ids) are dropped into ``problems``. No passages: these sets ship no corpus."""
    out = Converted()
    seen: set[str] = set()
    for where, record in records:
        if not isinstance(record, dict):
            out.problems.add(where, "record is not a JSON object")
            continue
        try:
            row = _record_to_row(record, data_source, len(out.rows), split)
            if row.id in seen:
                raise DataError(f"repeated id {row.id!r}")
        except DataError as exc:
            out.problems.add(where, str(exc))
            continue
        seen.add(row.id)
        out.rows.append(row)
    return out
