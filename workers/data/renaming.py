"""Entity renaming for synthetic worlds (``sft.rename_entities``).

Ray-free; runs in the SFT driver. A ``NamePool`` holds a world's names grouped by shape;
``Renaming.draw`` gives one row's entities other names of the same shape, and a
``Renaming`` applies that substitution to every text of the row and its documents. Only
sound in an invented world (toyworld), where no name carries knowledge the policy could
have memorised from pretraining.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace

from workers.data.rows import QARow
from workers.data.toyworld import FRAME_WORDS
from workers.types import Document


def entity_names(row: QARow) -> list[str]:
    """The names a row's gold trajectory is about: its supporting paragraphs' titles and answers."""
    titles = [doc.split("\n", 1)[0].strip('"') for doc in row.ground_truth.support_docs]
    return [n for n in dict.fromkeys([*titles, *row.ground_truth.target]) if n.strip()]


class NamePool:
    """Names to rename entities with, grouped by shape: frame words (``University``,
    ``The``, ...) kept, every other word by its case. A person's name is replaced by a
    two-word name, a university by another ``X University``, a currency by a lower-case word."""

    def __init__(self, names: Iterable[str]) -> None:
        self._by_shape: dict[tuple[str, ...], list[str]] = {}
        for name in dict.fromkeys(n for n in names if n.strip()):
            self._by_shape.setdefault(self.shape(name), []).append(name)

    @staticmethod
    def shape(name: str) -> tuple[str, ...]:
        return tuple(w if w in FRAME_WORDS else ("a" if w.islower() else "A") for w in name.split(" "))

    def draw(self, name: str, rng: random.Random, taken: set[str]) -> str:
        """Another name of ``name``'s shape not in ``taken`` (``name`` itself when there is none)."""
        options = self._by_shape.get(self.shape(name), [])
        for _ in range(8):  # random probes first: pools are large, ``taken`` small
            if options and (pick := rng.choice(options)) != name and pick not in taken:
                return pick
        free = [n for n in options if n != name and n not in taken]
        return rng.choice(free) if free else name


class Renaming:
    """A consistent substitution of whole names in texts (longest name first)."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = {k: v for k, v in mapping.items() if k}
        names = sorted(self.mapping, key=len, reverse=True)
        self._pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b") if names else None

    @classmethod
    def draw(cls, row: QARow, pool: NamePool, rng: random.Random) -> Renaming:
        """Other names from ``pool`` for ``row``'s entities, distinct within the row."""
        names = entity_names(row)
        taken, mapping = set(names), {}
        for name in names:
            mapping[name] = new = pool.draw(name, rng, taken)
            taken.add(new)
        return cls(mapping)

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self.mapping[m.group(0)], text)

    def document(self, doc: Document) -> Document:
        return replace(doc, title=self(doc.title), text=self(doc.text))

    def row(self, row: QARow) -> QARow:
        """``row`` as the renamed world would have it (question, prompt, ground truth)."""
        gt = row.ground_truth
        return replace(
            row, question=self(row.question),
            prompt=tuple({**m, "content": self(m["content"])} for m in row.prompt),
            ground_truth=replace(gt, target=tuple(map(self, gt.target)),
                                 search_keys=tuple(tuple(map(self, g)) for g in gt.search_keys),
                                 support_docs=tuple(map(self, gt.support_docs))))
