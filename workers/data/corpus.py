"""Passages and the corpus JSONL format (DESIGN.md 4: ``{"id", "contents"}``, wiki-18 style).

Ids are derived from the passage's title and text, so they are stable across runs and
independent of the order in which passages are met.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from workers.data.problems import DataError


@dataclass(frozen=True)
class Passage:
    """One corpus passage."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """``"Title"\\ntext``, the form stored in the corpus and shown to reward functions."""
        return f'"{self.title}"\n{self.text}'


def passage_id(title: str, text: str) -> str:
    """A stable id from the passage's content.

    >>> passage_id("Paris", "Paris is the capital of France.")
    'p-781dbb4020492d6b'
    """
    digest = hashlib.sha256(f"{title}\x00{text}".encode()).hexdigest()
    return f"p-{digest[:16]}"


def make_passage(title: str, text: str) -> Passage:
    """A passage with whitespace trimmed and its content-derived id."""
    title, text = title.strip(), text.strip()
    return Passage(passage_id(title, text), title, text)


def split_contents(contents: str) -> tuple[str, str]:
    """Invert ``Passage.contents``: ``'"T"\\ntext'`` -> ``("T", "text")``; no title line -> ``("", contents)``."""
    head, sep, rest = contents.partition("\n")
    if sep and len(head) >= 2 and head.startswith('"') and head.endswith('"'):
        return head[1:-1], rest
    return "", contents


def write_corpus_jsonl(passages: Iterable[Passage], path: str | Path) -> int:
    """Write ``{"id", "contents"}`` lines, skipping repeated ids; return the number written."""
    seen: set[str] = set()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for passage in passages:
            if passage.id in seen:
                continue
            seen.add(passage.id)
            fh.write(json.dumps({"id": passage.id, "contents": passage.contents}, ensure_ascii=False))
            fh.write("\n")
    tmp.replace(path)  # readers never see a half-written corpus
    return len(seen)


def read_corpus_jsonl(path: str | Path) -> Iterator[Passage]:
    """Yield passages from ``{"id","contents"}`` or ``{"id","title","text"}`` lines.

    Raises ``DataError`` naming the file and line of the first malformed line.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or "id" not in record:
                raise DataError(f"{where}: a passage needs an 'id'")
            if "contents" in record:
                title, text = split_contents(str(record["contents"]))
            elif "text" in record:
                title, text = str(record.get("title", "")), str(record["text"])
            else:
                raise DataError(f"{where}: a passage needs 'contents' or 'title' and 'text'")
            yield Passage(str(record["id"]), title, text)
