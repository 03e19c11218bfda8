"""``RewardWorker``: ``TrajectoryBatch`` -> ``RewardBatch`` (DESIGN.md 3 step 3, 4 Rewards).

Ray-free. Runs inside a reward actor (``actors.reward``, CPU) or in the driver when
``reward.num_workers=0``. Token positions come from the rollout's ``Turn`` spans and
``action_mask``, never from re-tokenizing the decoded text (DESIGN.md 4, Trajectory).

Outcome of a well-formed response: the answer metric (F1, or EM for ``outcome_only``) of
the last ``<answer>`` block + ``key_weight`` x search-key score; otherwise
``format_penalty`` and no step rewards. The breakdown reports every enabled term even
when the format check fails (it describes the episode); disabled terms report 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from typing import NamedTuple, NoReturn

import numpy as np

from workers.config import ConfigError, RewardConfig
from workers.reward.info_gain import (
    CorpusIdf,
    CosineFn,
    information_gains,
    redundancy_penalties,
    tfidf_cosines,
)
from workers.reward.metrics import (
    answer_f1,
    exact_match,
    extract_answer,
    format_ok,
    search_key_score,
)
from workers.sharding import shard_range
from workers.types import GroundTruth, RewardBatch, TrajectoryBatch, Turn, support_doc_contents

logger = logging.getLogger(__name__)

METRIC_OUTCOME = "reward/outcome"
METRIC_FORMAT_OK = "reward/format_ok"
METRIC_ANSWER_F1 = "reward/answer_f1"
METRIC_EXACT_MATCH = "reward/exact_match"
METRIC_KEY_SCORE = "reward/key_score"
METRIC_INFO_GAIN = "reward/info_gain"
METRIC_REDUNDANCY = "reward/redundancy"
METRIC_NUM_SEARCHES = "reward/num_searches"


class MalformedTrajectoryError(ValueError):
    """A trajectory cannot be scored; the message starts with its sample id."""

    def __init__(self, sample_id: str, reason: str) -> None:
        super().__init__(f"sample {sample_id!r}: {reason}")
        self.sample_id = sample_id
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Ray pickles errors raised in actors; rebuild from both fields, not from args.
        return (type(self), (self.sample_id, self.reason))


class TrajectoryScore(NamedTuple):
    """Reward terms of one trajectory (before they are placed on tokens)."""

    format_ok: bool
    answer_f1: float
    exact_match: float
    key_score: float
    outcome: float
    step_gains: tuple[float, ...]
    step_penalties: tuple[float, ...]

    @property
    def step_rewards(self) -> tuple[float, ...]:
        """s_t = G_t - P_t per search step (disabled terms are already 0)."""
        return tuple(g - p for g, p in zip(self.step_gains, self.step_penalties, strict=True))


def score_trajectory(turns: Sequence[Turn], response_text: str, truth: GroundTruth,
                     cfg: RewardConfig, cosine_fn: CosineFn = tfidf_cosines) -> TrajectoryScore:
    """Outcome, search-key score and per-step gains/penalties of one trajectory.

    ``cosine_fn`` scores documents against the gold documents for the information gain
    (default: the per-document TF-IDF fit of StepSearch; ``CorpusIdf.cosines`` for
    ``reward.info_gain_idf=corpus``).

    >>> truth = GroundTruth(target=("Paris",), search_keys=(("capital of France",),))
    >>> turns = [Turn("search", 0, 4, 4, 9, query="capital of France"),
    ...          Turn("answer", 9, 12, 12, 12)]
    >>> cfg = RewardConfig(use_info_gain=False)
    >>> s = score_trajectory(turns, "... <answer> Paris </answer>", truth, cfg)
    >>> s.format_ok, s.answer_f1, s.key_score, round(s.outcome, 3), s.step_penalties
    (True, 1.0, 1.0, 1.618, (0.0,))
    """
    searches = [turn for turn in turns if turn.kind == "search"]
    answer = extract_answer(response_text)
    f1 = answer_f1(answer, truth.target)
    em = exact_match(answer, truth.target)
    queries = [turn.query or "" for turn in searches]
    key = search_key_score(queries, truth.search_keys) if cfg.use_search_key else 0.0
    no_steps = [0.0] * len(searches)
    texts = [turn.doc_texts for turn in searches]
    # Release-style {title, paragraph_text} gold documents score as their contents string.
    gold = [support_doc_contents(doc) for doc in truth.support_docs]
    gains = information_gains(texts, gold, cosine_fn) if cfg.use_info_gain else no_steps
    # Redundancy compares document identities: ids, or the texts when a retriever gave none.
    ids = [turn.doc_ids or turn.doc_texts for turn in searches]
    penalties = redundancy_penalties(ids) if cfg.use_redundancy else no_steps
    ok = format_ok(response_text)
    if ok:
        metric = f1 if cfg.answer_metric == "f1" else em
        outcome = metric + (cfg.key_weight * key if cfg.use_search_key else 0.0)
    else:
        outcome = cfg.format_penalty
    return TrajectoryScore(ok, f1, em, key, outcome, tuple(gains), tuple(penalties))


def last_action_index(action_mask: np.ndarray, response_length: int) -> int:
    """Index of the last policy token within the response, or -1 when there is none.

    >>> last_action_index(np.array([1, 1, 0, 0, 1, 0, 0]), 6)
    4
    """
    hits = np.flatnonzero(action_mask[:response_length])
    return int(hits[-1]) if hits.size else -1


def token_rewards(turns: Sequence[Turn], action_mask: np.ndarray, response_length: int,
                  outcome: float, step_rewards: Sequence[float],
                  step_reward_scale: float) -> np.ndarray:
    """One trajectory's token-level rewards, (T,) float32 with T = ``len(action_mask)``.

    The outcome goes on the last action token; ``step_reward_scale`` x s_t on the last
    token (``action_end - 1``) of the t-th search turn; observation tokens get nothing.
    ``step_rewards`` holds one value per search turn, or none (``()``) when the format
    check failed. Spans are trusted here:
    ``RewardWorker`` validates them first.

    >>> turns = [Turn("search", 0, 3, 3, 6, query="q"), Turn("answer", 6, 8, 8, 8)]
    >>> mask = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0])
    >>> token_rewards(turns, mask, 8, outcome=1.0, step_rewards=[0.5],
    ...               step_reward_scale=0.6).tolist()
    [0.0, 0.0, 0.30000001192092896, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    """
    rewards = np.zeros(len(action_mask), dtype=np.float32)  # (T,)
    searches = [turn for turn in turns if turn.kind == "search"]
    if step_rewards:
        for turn, step in zip(searches, step_rewards, strict=True):
            rewards[turn.action_end - 1] += step_reward_scale * step
    rewards[last_action_index(action_mask, response_length)] += outcome
    return rewards


def validate_trajectory(batch: TrajectoryBatch, index: int, cfg: RewardConfig) -> None:
    """Raise ``MalformedTrajectoryError`` (naming the sample id) if sample ``index`` is unscorable."""
    sample_id = batch.sample_ids[index]
    turns, truth = batch.turns[index], batch.ground_truth[index]
    length, width = int(batch.response_lengths[index]), batch.response_ids.shape[1]

    def fail(reason: str) -> NoReturn:
        raise MalformedTrajectoryError(sample_id, reason)

    if not turns:
        fail("has no turns")
    if not 0 < length <= width:
        fail(f"response length {length} is outside (0, {width}]")
    if not truth.target:
        fail("ground truth has no target answer")
    if cfg.use_search_key and not truth.search_keys:
        fail("ground truth has no search_keys (needed when use_search_key is on)")
    if cfg.use_info_gain and not truth.support_docs:
        fail("ground truth has no support_docs (needed when use_info_gain is on)")
    mask = batch.action_mask[index]
    for t, turn in enumerate(turns):
        if not (0 <= turn.action_start < turn.action_end <= length
                and 0 <= turn.obs_start <= turn.obs_end <= length):
            fail(f"turn {t} spans action [{turn.action_start}, {turn.action_end}) / observation "
                 f"[{turn.obs_start}, {turn.obs_end}) outside the response [0, {length})")
        if turn.kind == "search" and turn.query is None:
            fail(f"search turn {t} has no query")
        if turn.kind == "search" and not mask[turn.action_end - 1]:
            fail(f"search turn {t} ends on token {turn.action_end - 1}, which is not an action token")
        if turn.doc_ids and len(turn.doc_ids) != len(turn.doc_texts):
            fail(f"turn {t} has {len(turn.doc_ids)} doc_ids but {len(turn.doc_texts)} doc_texts")
    if last_action_index(mask, length) < 0:
        fail("has no action token within its response length")


def _check_columns(batch: TrajectoryBatch) -> None:
    """Every per-sample column of ``batch`` has one entry per sample."""
    size = len(batch)
    columns = {"turns": batch.turns, "response_text": batch.response_text,
               "sample_ids": batch.sample_ids, "ground_truth": batch.ground_truth,
               "response_lengths": batch.response_lengths, "action_mask": batch.action_mask}
    for name, column in columns.items():
        if len(column) != size:
            raise ValueError(f"TrajectoryBatch.{name} has {len(column)} entries for {size} samples")
    if batch.action_mask.shape != batch.response_ids.shape:
        raise ValueError(f"TrajectoryBatch.action_mask has shape {batch.action_mask.shape}, "
                         f"response_ids {batch.response_ids.shape}")


def _stack(rows: Sequence[tuple[TrajectoryScore, np.ndarray, int]], num_tokens: int) -> RewardBatch:
    """Columnar ``RewardBatch`` from per-sample (score, token rewards, number of searches)."""
    scores = [score for score, _, _ in rows]
    token = np.zeros((len(rows), num_tokens), dtype=np.float32)  # (B, T)
    for i, (_, vector, _) in enumerate(rows):
        token[i] = vector
    return RewardBatch(
        token_rewards=token,
        format_ok=np.array([s.format_ok for s in scores], dtype=bool),
        answer_f1=np.array([s.answer_f1 for s in scores], dtype=np.float64),
        exact_match=np.array([s.exact_match for s in scores], dtype=np.float64),
        key_score=np.array([s.key_score for s in scores], dtype=np.float64),
        outcome=np.array([s.outcome for s in scores], dtype=np.float64),
        num_searches=np.array([n for _, _, n in rows], dtype=np.int32),
        step_gains=tuple(s.step_gains for s in scores),
        step_penalties=tuple(s.step_penalties for s in scores),
    )


def concat_reward_batches(parts: Sequence[RewardBatch]) -> RewardBatch:
    """Concatenate shards (in order) back into one ``RewardBatch``; all must share T."""
    if not parts:
        raise ValueError("no RewardBatch to concatenate")
    widths = {part.token_rewards.shape[1] for part in parts}
    if len(widths) != 1:
        raise ValueError(f"shards disagree on the number of tokens: {sorted(widths)}")

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in parts])

    return RewardBatch(
        token_rewards=cat("token_rewards"), format_ok=cat("format_ok"), answer_f1=cat("answer_f1"),
        exact_match=cat("exact_match"), key_score=cat("key_score"), outcome=cat("outcome"),
        num_searches=cat("num_searches"),
        step_gains=tuple(g for part in parts for g in part.step_gains),
        step_penalties=tuple(p for part in parts for p in part.step_penalties),
    )


@dataclass(frozen=True)
class RewardTotals:
    """The sums and counts behind ``reward_metrics``: a reward shard returns these beside its
    ``RewardBatch``, and shards scored apart add up to the whole batch's. Per-sample
    terms are summed over samples; information gain and redundancy over search steps."""

    samples: int = 0
    outcome: float = 0.0
    format_ok: float = 0.0
    answer_f1: float = 0.0
    exact_match: float = 0.0
    key_score: float = 0.0
    num_searches: float = 0.0
    steps: int = 0
    info_gain: float = 0.0
    penalized_steps: int = 0
    redundancy: float = 0.0

    @classmethod
    def of(cls, rewards: RewardBatch) -> RewardTotals:
        gains = [g for sample in rewards.step_gains for g in sample]
        penalties = [p for sample in rewards.step_penalties for p in sample]
        def total(column: np.ndarray) -> float:
            return float(np.sum(column, dtype=np.float64))

        return cls(samples=len(rewards), outcome=total(rewards.outcome), format_ok=total(rewards.format_ok),
                   answer_f1=total(rewards.answer_f1), exact_match=total(rewards.exact_match),
                   key_score=total(rewards.key_score), num_searches=total(rewards.num_searches),
                   steps=len(gains), info_gain=float(sum(gains)), penalized_steps=len(penalties),
                   redundancy=float(sum(penalties)))

    def __add__(self, other: RewardTotals) -> RewardTotals:
        return RewardTotals(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))  # type: ignore[arg-type]

    def metrics(self) -> dict[str, float]:
        """Batch means keyed by the ``reward/...`` metric names (empty for no samples)."""
        if self.samples == 0:
            return {}
        n = self.samples
        return {
            METRIC_OUTCOME: self.outcome / n, METRIC_FORMAT_OK: self.format_ok / n,
            METRIC_ANSWER_F1: self.answer_f1 / n, METRIC_EXACT_MATCH: self.exact_match / n,
            METRIC_KEY_SCORE: self.key_score / n,
            METRIC_INFO_GAIN: self.info_gain / self.steps if self.steps else 0.0,
            METRIC_REDUNDANCY: self.redundancy / self.penalized_steps if self.penalized_steps else 0.0,
            METRIC_NUM_SEARCHES: self.num_searches / n,
        }


def reward_metrics(rewards: RewardBatch) -> dict[str, float]:
    """Batch means of the breakdown, keyed by the ``reward/...`` metric names."""
    return RewardTotals.of(rewards).metrics()


class RewardWorker:
    """Scores trajectories with the StepSearch reward of one ``RewardConfig``.

    Stateless apart from its config, so replicas can score disjoint shards of one batch.
    """

    def __init__(self, cfg: RewardConfig, idf: CorpusIdf | None = None) -> None:
        if cfg.answer_metric not in ("f1", "em"):
            raise ConfigError("reward.answer_metric", f"must be f1 or em, got {cfg.answer_metric!r}")
        if cfg.info_gain_idf not in ("pair", "corpus"):
            raise ConfigError("reward.info_gain_idf", f"must be pair or corpus, got {cfg.info_gain_idf!r}")
        if cfg.info_gain_idf == "corpus" and cfg.use_info_gain and idf is None:
            raise ConfigError("reward.info_gain_idf", "corpus needs the corpus document frequencies (idf=)")
        self.cfg = cfg
        self._cosine_fn: CosineFn = idf.cosines if cfg.info_gain_idf == "corpus" and idf else tfidf_cosines

    def score(self, batch: TrajectoryBatch, start: int = 0, stop: int | None = None) -> RewardBatch:
        """Rewards of samples ``[start, stop)`` of ``batch`` (default: all of it).

        Raises ``MalformedTrajectoryError`` naming the first unscorable sample.
        """
        stop = len(batch) if stop is None else stop
        if not 0 <= start <= stop <= len(batch):
            raise ValueError(f"range [{start}, {stop}) is outside the batch of {len(batch)}")
        _check_columns(batch)
        rows = []
        for i in range(start, stop):
            validate_trajectory(batch, i, self.cfg)
            turns = batch.turns[i]
            score = score_trajectory(turns, batch.response_text[i], batch.ground_truth[i], self.cfg,
                                     self._cosine_fn)
            steps = score.step_rewards if score.format_ok else ()
            vector = token_rewards(turns, batch.action_mask[i], int(batch.response_lengths[i]),
                                   score.outcome, steps, self.cfg.step_reward_scale)
            rows.append((score, vector, sum(turn.kind == "search" for turn in turns)))
        logger.debug("scored samples [%d, %d) of %d", start, stop, len(batch))
        return _stack(rows, batch.response_ids.shape[1])

    def score_shard(self, batch: TrajectoryBatch, shard: int, num_shards: int) -> RewardBatch:
        """Rewards of shard ``shard`` of ``num_shards`` contiguous shards (see ``shard_range``)."""
        start, stop = shard_range(len(batch), shard, num_shards)
        return self.score(batch, start, stop)

    def score_shard_totals(self, batch: TrajectoryBatch, shard: int, num_shards: int
                           ) -> tuple[RewardBatch, RewardTotals]:
        """``score_shard`` and its ``RewardTotals`` (the batch's metrics add up from these)."""
        rewards = self.score_shard(batch, shard, num_shards)
        return rewards, RewardTotals.of(rewards)
