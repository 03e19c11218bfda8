"""What defines a training run, recorded in each checkpoint and checked on resume.

Runs in the driver (``launch.train``), before any actor starts. A resumed run must be the
same run: the same starting policy (which is also the KL reference), seed, data, reward
and learner layout. On ``trainer.resume``, the settings the command line leaves alone are
taken from the checkpoint (so ``trainer.resume=auto`` alone continues a run that started
from an SFT policy with that policy, not with the default one); a setting the command line
gives with another value stops the run with a ``ConfigError`` naming the field and both
values, unless ``trainer.resume_allow_changes`` lets it through with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from workers.config import Config, ConfigError, RewardConfig
from workers.data.rows import SPLITS

logger = logging.getLogger(__name__)

IDENTITY_KEY = "run"
"""Key of the identity in a checkpoint's ``trainer_state.json``."""


def data_fingerprint(data_dir: str | Path, row_format: str) -> str:
    """sha256 over the row files of every split present (names and bytes)."""
    h = hashlib.sha256()
    for split in SPLITS:
        path = Path(data_dir) / f"{split}.{row_format}"
        if path.exists():
            h.update(path.name.encode() + b"\x00")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def reward_terms(reward: RewardConfig) -> dict[str, Any]:
    """The reward preset and its terms (the worker count is not part of the run)."""
    return {k: v for k, v in asdict(reward).items() if k != "num_workers"}


def run_identity(cfg: Config, model_path: str) -> dict[str, Any]:
    """The identity a checkpoint records (``trainer_state.json["run"]``)."""
    return {"model_path": model_path, "seed": cfg.seed,
            "data": data_fingerprint(cfg.data.output_dir, cfg.data.format),
            "reward": reward_terms(cfg.reward),
            "learner.num_ranks": cfg.learner.num_ranks, "learner.zero_stage": cfg.learner.zero_stage}


def _given(field: str, overrides: Collection[str]) -> bool:
    """Whether a command-line override sets ``field`` (or its group, or a key under it)."""
    group = field.split(".")[0]
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in (field, group) or key.startswith(field + "."):
            return True
    return False


def _differs(field: str, ours: Any, theirs: Any, checkpoint: Path, allow: bool) -> None:
    message = (f"the checkpoint {checkpoint} was trained with {theirs!r}, the command line gives {ours!r}; "
               f"drop the override to continue the run, or set trainer.resume_allow_changes=true to change it")
    if not allow:
        raise ConfigError(field, message)
    logger.warning("resuming with a changed %s: %s", field, message)


def reconcile(cfg: Config, state: Mapping[str, Any], checkpoint: Path, overrides: Collection[str]) -> Config:
    """``cfg`` with the checkpoint's run-defining settings where the command line gives none.

    ``state``: the checkpoint's ``trainer_state.json``; ``overrides``: the command line's
    Hydra overrides. Raises ``ConfigError`` for a given setting that differs (or for data
    files that changed), unless ``trainer.resume_allow_changes``.
    """
    old = _recorded(state)
    allow = cfg.trainer.resume_allow_changes
    if old.get("model_path"):
        if _given("model.path", overrides) and cfg.model.path != old["model_path"]:
            _differs("model.path", cfg.model.path, old["model_path"], checkpoint, allow)
        else:
            cfg = replace(cfg, model=replace(cfg.model, path=old["model_path"]))
    if "seed" in old and cfg.seed != old["seed"]:
        if _given("seed", overrides):
            _differs("seed", cfg.seed, old["seed"], checkpoint, allow)
        else:
            cfg = replace(cfg, seed=int(old["seed"]))
    if "reward" in old and reward_terms(cfg.reward) != old["reward"]:
        if _given("reward", overrides):
            _differs("reward", reward_terms(cfg.reward), old["reward"], checkpoint, allow)
        else:
            cfg = replace(cfg, reward=RewardConfig(**{**old["reward"], "num_workers": cfg.reward.num_workers}))
    for field in ("learner.num_ranks", "learner.zero_stage"):
        name = field.split(".")[1]
        if field in old and getattr(cfg.learner, name) != old[field]:
            if _given(field, overrides):
                _differs(field, getattr(cfg.learner, name), old[field], checkpoint, allow)
            else:
                cfg = replace(cfg, learner=replace(cfg.learner, **{name: old[field]}))
    if old.get("data") and (now := data_fingerprint(cfg.data.output_dir, cfg.data.format)) != old["data"]:
        _differs("data.output_dir", f"{cfg.data.output_dir} (rows fingerprint {now})",
                 f"rows fingerprint {old['data']}", checkpoint, allow)
    return cfg


def _recorded(state: Mapping[str, Any]) -> dict[str, Any]:
    """The identity of a checkpoint; older checkpoints have only their config and model path."""
    if IDENTITY_KEY in state:
        return dict(state[IDENTITY_KEY])
    config = state.get("config") or {}
    out: dict[str, Any] = {"model_path": state.get("model_path"), "seed": state.get("seed")}
    if "reward" in config:
        out["reward"] = {k: v for k, v in config["reward"].items() if k != "num_workers"}
    for field in ("num_ranks", "zero_stage"):
        if field in config.get("learner", {}):
            out[f"learner.{field}"] = config["learner"][field]
    return {k: v for k, v in out.items() if v is not None}


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json``."""
    result: dict[str, Any] = json.loads((checkpoint / "trainer_state.json").read_text())
    return result
