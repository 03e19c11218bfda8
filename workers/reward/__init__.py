"""StepSearch reward math (DESIGN.md 4, Rewards): pure functions and the ``RewardWorker``.

Ray-free; runs in reward actors (CPU) or in the driver when ``reward.num_workers=0``.
"""

from workers.reward.info_gain import (
    CorpusIdf,
    analyze,
    information_gains,
    redundancy_penalties,
    step_information_gain,
    tfidf_cosines,
    tfidf_cosines_reference,
)
from workers.reward.metrics import (
    answer_f1,
    cover_exact_match,
    exact_match,
    extract_answer,
    format_ok,
    normalize_answer,
    search_key_score,
)
from workers.reward.scoring import (
    MalformedTrajectoryError,
    RewardTotals,
    RewardWorker,
    TrajectoryScore,
    concat_reward_batches,
    last_action_index,
    reward_metrics,
    score_trajectory,
    shard_range,
    token_rewards,
    validate_trajectory,
)

__all__ = [
    "CorpusIdf",
    "MalformedTrajectoryError",
    "RewardTotals",
    "RewardWorker",
    "TrajectoryScore",
    "analyze",
    "answer_f1",
    "concat_reward_batches",
    "cover_exact_match",
    "exact_match",
    "extract_answer",
    "format_ok",
    "information_gains",
    "last_action_index",
    "normalize_answer",
    "redundancy_penalties",
    "reward_metrics",
    "score_trajectory",
    "search_key_score",
    "shard_range",
    "step_information_gain",
    "tfidf_cosines",
    "tfidf_cosines_reference",
    "token_rewards",
    "validate_trajectory",
]
