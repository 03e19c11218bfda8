"""The table of ``launch.evaluate eval_sets=[...]``: a row per evaluated set and their average.

Pure and Ray-free; runs in the user's process. The layout follows the StepSearch
and Search-R1 tables: one entry per dataset, named by the paper's column (``HotpotQA``,
``2Wiki``, ``MuSiQue``, ``Bamboogle``), and an average. As in those papers, the average is
the unweighted mean over sets, so a small set weighs as much as a large one. ``gold-hit``
(searches that retrieved a support passage) exists only for sets whose rows list support
documents; FlashRAG sets show ``-`` and the average is over the sets that have it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from workers.evaluation import EVAL_COVER_EM, EVAL_EM, EVAL_F1, EVAL_GOLD_HIT, EVAL_SEARCHES

COLUMNS = (("EM", "em"), ("F1", "f1"), ("cover-EM", "cover_em"), ("searches", "searches"), ("gold-hit", "gold_hit"))
"""(title, ``SetScore`` field) in display order."""

AVERAGE = "average"


@dataclass(frozen=True)
class SetScore:
    """One evaluated set: questions, mean scores, and where its rows and predictions are."""

    name: str
    questions: int
    em: float
    f1: float
    cover_em: float
    searches: float
    """Searches per question."""
    gold_hit: float | None
    """Fraction of searches that retrieved a support passage; None without support docs."""
    rows: str = ""
    predictions: str = ""

    @classmethod
    def from_overall(cls, name: str, questions: int, overall: Mapping[str, float], has_support: bool,
                     rows: str = "", predictions: str = "") -> SetScore:
        """From ``EvalResult.overall`` (``eval/em`` ...)."""
        return cls(name, questions, overall[EVAL_EM], overall[EVAL_F1], overall[EVAL_COVER_EM],
                   overall[EVAL_SEARCHES], overall[EVAL_GOLD_HIT] if has_support else None, rows, predictions)


def average(scores: Sequence[SetScore]) -> SetScore:
    """The unweighted mean over sets; ``questions`` is their total.

    >>> a = SetScore("A", 10, 0.5, 0.6, 0.5, 2.0, 0.25)
    >>> b = SetScore("B", 30, 0.1, 0.2, 0.3, 1.0, None)
    >>> avg = average([a, b])
    >>> (avg.questions, round(avg.em, 3), round(avg.f1, 3), avg.searches, avg.gold_hit)
    (40, 0.3, 0.4, 1.5, 0.25)
    """
    if not scores:
        raise ValueError("no evaluated sets to average")
    hits = [s.gold_hit for s in scores if s.gold_hit is not None]

    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values)

    return SetScore(AVERAGE, sum(s.questions for s in scores), mean([s.em for s in scores]),
                    mean([s.f1 for s in scores]), mean([s.cover_em for s in scores]),
                    mean([s.searches for s in scores]), mean(hits) if hits else None)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cells(score: SetScore) -> list[str]:
    return [_cell(getattr(score, key)) for _, key in COLUMNS]


def table_text(scores: Sequence[SetScore]) -> str:
    """Fixed-width lines: a header, one line per set, then the average.

    >>> print(table_text([SetScore("Bamboogle", 2, 0.5, 0.75, 0.5, 1.0, None)]))
    set           n         EM         F1   cover-EM   searches   gold-hit
    Bamboogle     2      0.500      0.750      0.500      1.000          -
    average       2      0.500      0.750      0.500      1.000          -
    """
    rows = [*scores, average(scores)]
    width = max(len("set"), *(len(s.name) for s in rows))
    lines = [f"{'set':<{width}} {'n':>5} " + " ".join(f"{title:>10}" for title, _ in COLUMNS)]
    for score in rows:
        lines.append(f"{score.name:<{width}} {score.questions:>5} " + " ".join(f"{c:>10}" for c in _cells(score)))
    return "\n".join(lines)


def table_markdown(scores: Sequence[SetScore]) -> str:
    """The same table in Markdown, the average in bold.

    >>> print(table_markdown([SetScore("NQ", 4, 0.25, 0.5, 0.25, 2.0, None)]))
    | set | n | EM | F1 | cover-EM | searches | gold-hit |
    |---|---:|---:|---:|---:|---:|---:|
    | NQ | 4 | 0.250 | 0.500 | 0.250 | 2.000 | - |
    | **average** | 4 | 0.250 | 0.500 | 0.250 | 2.000 | - |
    """
    lines = ["| set | n | " + " | ".join(title for title, _ in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    for score in scores:
        lines.append(f"| {score.name} | {score.questions} | " + " | ".join(_cells(score)) + " |")
    avg = average(scores)
    lines.append(f"| **{avg.name}** | {avg.questions} | " + " | ".join(_cells(avg)) + " |")
    return "\n".join(lines)


def table_json(scores: Sequence[SetScore], **meta: Any) -> dict[str, Any]:
    """``{**meta, "sets": [...], "average": {...}}`` with the fields of ``SetScore``."""
    avg = asdict(average(scores))
    for key in ("rows", "predictions"):
        avg.pop(key)
    return {**meta, "sets": [asdict(s) for s in scores], "average": avg}


def unique_names(names: Sequence[str], fallbacks: Sequence[str]) -> list[str]:
    """``names``, with a repeated one followed by its fallback (the set's directory).

    >>> unique_names(["MuSiQue", "MuSiQue", "NQ"], ["data/musique", "runs/mq", "data/nq"])
    ['MuSiQue (data/musique)', 'MuSiQue (runs/mq)', 'NQ']
    """
    return [f"{n} ({f})" if names.count(n) > 1 else n for n, f in zip(names, fallbacks, strict=True)]
