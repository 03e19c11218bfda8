"""Refusing to train with a reward term whose inputs the rows lack.

Runs in the driver before any actor starts. FlashRAG sets (Bamboogle, NQ, ...) carry
neither search keys nor support documents; without this check the search-key reward or
the information gain would fail on the first batch, deep inside a reward actor
(``MalformedTrajectoryError``), after the cluster and the engines were up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from workers.config.schema import Config, ConfigError, RewardConfig
from workers.data.rows import QARow, read_rows


def check_reward_inputs(reward: RewardConfig, rows: Sequence[QARow], where: str) -> None:
    """Raise ``ConfigError`` naming the reward term when a row lacks what the term needs.

    ``reward.use_search_key`` needs ``search_keys``; ``reward.use_info_gain`` needs
    ``support_docs``. ``where`` names the rows (their file) in the message.
    """
    needs = (("reward.use_search_key", reward.use_search_key, "search-key reward", "search_keys",
              lambda r: bool(r.ground_truth.search_keys)),
             ("reward.use_info_gain", reward.use_info_gain, "information-gain reward", "support_docs",
              lambda r: bool(r.ground_truth.support_docs)))
    for field_name, enabled, term, column, has in needs:
        if not enabled:
            continue
        lacking = [r for r in rows if not has(r)]
        if lacking:
            first = lacking[0]
            raise ConfigError(field_name, (
                f"the {term} needs {column}, but {len(lacking)} of {len(rows)} rows in {where} have none "
                f"(first: id {first.id!r}, data_source {first.data_source!r}; FlashRAG sets such as "
                f"Bamboogle or NQ carry none). Train on rows that have them, or turn the term off "
                f"({field_name}=false, or reward=outcome_only)"))


def check_training_rows(cfg: Config) -> None:
    """``check_reward_inputs`` on the prepared training rows of ``cfg.data`` (the call
    ``launch.train`` makes once the data is on disk)."""
    path = Path(cfg.data.output_dir) / f"train.{cfg.data.format}"
    check_reward_inputs(cfg.reward, read_rows(path), str(path))
