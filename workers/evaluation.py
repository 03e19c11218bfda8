"""Scoring greedy evaluation rollouts: per-sample records and aggregate ``eval/...`` metrics.

Pure and Ray-free; runs wherever trajectories are in hand: the driver's periodic
evaluation, ``launch.evaluate`` and ``launch.ask`` (CPU). Answers are scored with the
reward module's SQuAD metrics (EM, F1, cover-EM) on the last ``<answer>`` block of
episodes that ended on an answer turn (``predicted_answer``). Search
quality is read off the turns: a search *hits* when one of its documents is a gold
support passage (both in the corpus ``contents`` form ``"Title"\\ntext``), and a
retrieved document is *redundant* when its id was already retrieved earlier in the
episode (DESIGN.md 4, redundancy penalty).

Aggregates are micro-averages where the unit is a search or a document: ``gold_hit`` is
hitting searches / searches (over samples that have support passages), ``redundancy``
is redundant documents / retrieved documents. Both are 0.0 when nothing was searched.
``empty_answer`` is the fraction of episodes that ended on an empty ``<answer> </answer>``:
a greedy policy unsure which name to write may close the tag at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.data.corpus import split_contents
from workers.reward import answer_f1, cover_exact_match, exact_match, extract_answer, format_ok
from workers.types import GroundTruth, TrajectoryBatch, Turn

logger = logging.getLogger(__name__)

EVAL_EM = "eval/em"
EVAL_F1 = "eval/f1"
EVAL_COVER_EM = "eval/cover_em"
EVAL_SEARCHES = "eval/searches"
EVAL_GOLD_HIT = "eval/gold_hit"
EVAL_REDUNDANCY = "eval/redundancy"
EVAL_FORMAT_OK = "eval/format_ok"
EVAL_EMPTY_ANSWER = "eval/empty_answer"
EVAL_COUNT = "eval/count"
METRIC_KEYS = (EVAL_EM, EVAL_F1, EVAL_COVER_EM, EVAL_SEARCHES, EVAL_GOLD_HIT, EVAL_REDUNDANCY,
               EVAL_FORMAT_OK, EVAL_EMPTY_ANSWER, EVAL_COUNT)
"""Every aggregate key, in display order."""

Decode = Callable[[list[int]], str]
"""Token ids -> text (a tokenizer's ``decode``), to add each action's text to the turns."""


def source_key(key: str, data_source: str) -> str:
    """The per-source form of a metric key.

    >>> source_key(EVAL_EM, "musique")
    'eval/musique/em'
    """
    namespace, _, name = key.partition("/")
    return f"{namespace}/{data_source}/{name}"


def hops_key(key: str, num_hops: int) -> str:
    """The per-hop-count form of a metric key (questions composing ``num_hops`` sub-questions).

    >>> hops_key(EVAL_EM, 3)
    'eval/3hop/em'
    """
    return source_key(key, f"{num_hops}hop")


def search_hits(turns: Sequence[Turn], support_docs: Sequence[str]) -> list[bool]:
    """For each search turn, whether any of its documents is a gold support passage.

    >>> gold = ['"Paris"\\nParis is in France.']
    >>> turns = [Turn("search", 0, 1, 1, 2, "paris", ("p1",), ('"Paris"\\nParis is in France.',)),
    ...          Turn("search", 2, 3, 3, 4, "lyon", ("p2",), ('"Lyon"\\nLyon is in France.',)),
    ...          Turn("answer", 4, 5, 5, 5)]
    >>> search_hits(turns, gold)
    [True, False]
    """
    gold = set(support_docs)
    return [any(text in gold for text in t.doc_texts) for t in turns if t.kind == "search"]


def redundant_docs(turns: Sequence[Turn]) -> tuple[int, int]:
    """``(redundant, retrieved)``: documents whose id the episode had already retrieved, of all.

    A repeat inside one search counts too, as in the step redundancy penalty (DESIGN.md 4).

    >>> turns = [Turn("search", 0, 1, 1, 2, "a", ("p1", "p2")),
    ...          Turn("search", 2, 3, 3, 4, "b", ("p2", "p3"))]
    >>> redundant_docs(turns)
    (1, 4)
    """
    seen: set[str] = set()
    redundant = retrieved = 0
    for turn in turns:
        if turn.kind != "search":
            continue
        for doc_id in turn.doc_ids:
            redundant += doc_id in seen
            retrieved += 1
            seen.add(doc_id)
    return redundant, retrieved


def doc_title(contents: str) -> str:
    """The title of a ``"Title"\\ntext`` passage ('' when it has no title line).

    >>> doc_title('"Paris"\\nParis is in France.')
    'Paris'
    """
    return split_contents(contents)[0]


@dataclass(frozen=True)
class EvalRecord:
    """One evaluated episode. ``gold_hit``/``redundancy`` are None when undefined for it."""

    sample_id: str
    data_source: str
    question: str | None
    targets: tuple[str, ...]
    prediction: str | None
    em: float
    f1: float
    cover_em: float
    format_ok: bool
    num_searches: int
    hit_searches: int
    """Searches that retrieved a gold support passage."""
    has_support: bool
    """The row lists gold support passages (else ``gold_hit`` is undefined)."""
    redundant_docs: int
    retrieved_docs: int
    response_text: str
    turns: tuple[dict[str, Any], ...]
    """JSON-able turns: kind, query, doc_ids, doc_titles, gold_hit (searches), text (if decoded)."""
    num_hops: int = 0
    """The question's sub-questions (0: unknown)."""

    @property
    def gold_hit(self) -> float | None:
        """Fraction of this episode's searches that hit a gold passage."""
        if not self.has_support or self.num_searches == 0:
            return None
        return self.hit_searches / self.num_searches

    @property
    def empty_answer(self) -> bool:
        """The episode ended on an answer block with nothing in it (``<answer> </answer>``)."""
        return self.prediction is not None and not self.prediction.strip()

    @property
    def redundancy(self) -> float | None:
        """Fraction of this episode's retrieved documents it had already retrieved."""
        return self.redundant_docs / self.retrieved_docs if self.retrieved_docs else None

    def to_json(self) -> dict[str, Any]:
        """The predictions-file form: scores, then the full trajectory."""
        return {
            "sample_id": self.sample_id, "data_source": self.data_source, "question": self.question,
            "targets": list(self.targets), "prediction": self.prediction, "em": self.em, "f1": self.f1,
            "cover_em": self.cover_em, "format_ok": self.format_ok, "num_hops": self.num_hops,
            "num_searches": self.num_searches,
            "gold_hit": self.gold_hit, "redundancy": self.redundancy,
            "response_text": self.response_text, "turns": [dict(t) for t in self.turns],
        }


@dataclass(frozen=True)
class EvalResult:
    """Per-sample records and their aggregates, keyed by ``METRIC_KEYS``: ``overall``, per data
    source, and per number of hops (questions whose hop count is known)."""

    records: tuple[EvalRecord, ...]
    overall: dict[str, float]
    by_source: dict[str, dict[str, float]]
    by_hops: dict[int, dict[str, float]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """One flat dict for loggers: ``eval/em`` ..., ``eval/<source>/em`` ... and ``eval/<n>hop/em`` ..."""
        flat = dict(self.overall)
        for source, values in self.by_source.items():
            flat.update({source_key(k, source): v for k, v in values.items()})
        for hops, values in self.by_hops.items():
            flat.update({hops_key(k, hops): v for k, v in values.items()})
        return flat


def _turn_json(turn: Turn, hit: bool | None, text: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": turn.kind}
    if text is not None:
        out["text"] = text
    if turn.kind == "search":
        out.update(query=turn.query, doc_ids=list(turn.doc_ids),
                   doc_titles=[doc_title(t) for t in turn.doc_texts], gold_hit=hit)
    return out


def predicted_answer(response_text: str, turns: Sequence[Turn]) -> str | None:
    """The last ``<answer>`` block when the episode ended on an answer turn, else None.

    The turn check matters: text the system inserted (a corrective note, a retrieved
    document) may itself contain a tag pair, which is not the policy's answer.

    >>> note = "write the answer between <answer> and </answer>."
    >>> predicted_answer("xyz " + note, [Turn("invalid", 0, 1, 1, 2)]) is None
    True
    >>> predicted_answer(note + " <answer> Paris </answer>", [Turn("invalid", 0, 1, 1, 2), Turn("answer", 2, 3, 3, 3)])
    'Paris'
    """
    if not turns or turns[-1].kind != "answer":
        return None
    return extract_answer(response_text)


def evaluate_sample(sample_id: str, data_source: str, ground_truth: GroundTruth, response_text: str,
                    turns: Sequence[Turn], question: str | None = None,
                    action_texts: Sequence[str] | None = None) -> EvalRecord:
    """Score one episode; ``action_texts`` (one per turn) are the policy's decoded actions."""
    prediction = predicted_answer(response_text, turns)
    targets = ground_truth.target
    hits = iter(search_hits(turns, ground_truth.support_docs))
    has_support = bool(ground_truth.support_docs)
    turn_json = []
    for i, turn in enumerate(turns):
        hit = next(hits) if turn.kind == "search" else None
        turn_json.append(_turn_json(turn, hit if has_support else None,
                                    action_texts[i] if action_texts is not None else None))
    searches = [t for t in turn_json if t["kind"] == "search"]
    redundant, retrieved = redundant_docs(turns)
    return EvalRecord(
        sample_id=sample_id, data_source=data_source, question=question, targets=tuple(targets),
        prediction=prediction, em=exact_match(prediction, targets), f1=answer_f1(prediction, targets),
        cover_em=cover_exact_match(prediction, targets), format_ok=format_ok(response_text),
        num_searches=len(searches), hit_searches=sum(bool(t["gold_hit"]) for t in searches),
        has_support=has_support, redundant_docs=redundant, retrieved_docs=retrieved,
        response_text=response_text, turns=tuple(turn_json), num_hops=ground_truth.num_hops)


def aggregate(records: Sequence[EvalRecord]) -> dict[str, float]:
    """Means of the answer scores and searches per episode; micro gold-hit and redundancy rates.

    An empty list gives zeros (and ``eval/count`` 0).
    """
    n = len(records)

    def mean(values: Sequence[float]) -> float:
        return sum(values) / n if n else 0.0

    supported = [r for r in records if r.has_support]
    hit_searches = sum(r.hit_searches for r in supported)
    searched = sum(r.num_searches for r in supported)
    redundant = sum(r.redundant_docs for r in records)
    retrieved = sum(r.retrieved_docs for r in records)
    return {
        EVAL_EM: mean([r.em for r in records]),
        EVAL_F1: mean([r.f1 for r in records]),
        EVAL_COVER_EM: mean([r.cover_em for r in records]),
        EVAL_SEARCHES: mean([float(r.num_searches) for r in records]),
        EVAL_GOLD_HIT: hit_searches / searched if searched else 0.0,
        EVAL_REDUNDANCY: redundant / retrieved if retrieved else 0.0,
        EVAL_FORMAT_OK: mean([float(r.format_ok) for r in records]),
        EVAL_EMPTY_ANSWER: mean([float(r.empty_answer) for r in records]),
        EVAL_COUNT: float(n),
    }


def evaluate_trajectories(batch: TrajectoryBatch, questions: Sequence[str | None] | None = None,
                          decode: Decode | None = None) -> EvalResult:
    """Score every episode of ``batch`` and aggregate, overall and per ``data_sources`` entry.

    ``questions`` (one per sample) go into the records; ``decode`` adds the text of each
    action (from ``response_ids``) to the records' turns.
    """
    if questions is not None and len(questions) != len(batch):
        raise ValueError(f"{len(questions)} questions for a batch of {len(batch)} samples")
    records = []
    for i in range(len(batch)):
        turns = batch.turns[i]
        texts = None
        if decode is not None:
            row = batch.response_ids[i]
            texts = [decode(row[t.action_start:t.action_end].tolist()) for t in turns]
        records.append(evaluate_sample(
            batch.sample_ids[i], batch.data_sources[i], batch.ground_truth[i], batch.response_text[i],
            turns, questions[i] if questions is not None else None, texts))
    return summarize(records)


def summarize(records: Sequence[EvalRecord]) -> EvalResult:
    """Aggregate records (e.g. of several evaluated chunks) overall, per data source and per hop count."""
    by_source: dict[str, list[EvalRecord]] = {}
    by_hops: dict[int, list[EvalRecord]] = {}
    for record in records:
        by_source.setdefault(record.data_source, []).append(record)
        if record.num_hops > 0:
            by_hops.setdefault(record.num_hops, []).append(record)
    return EvalResult(records=tuple(records), overall=aggregate(records),
                      by_source={s: aggregate(rs) for s, rs in sorted(by_source.items())},
                      by_hops={h: aggregate(rs) for h, rs in sorted(by_hops.items())})
