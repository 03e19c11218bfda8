"""Hydra wiring: registers the structured configs and turns a composed tree into a ``Config``.

Runs in the driver and in command-line entry points. The dataclasses live in
``workers.config`` (no Hydra needed there); the YAML presets in the ``conf`` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

import conf
from workers.config import Config, ConfigError, validate

CONFIG_DIR = str(Path(conf.__file__).resolve().parent)
"""Absolute path of the YAML tree, valid for a source checkout and an installed copy."""

_registered = False


def register_configs() -> None:
    """Register the schema as ``base_config`` (the first entry of ``conf/config.yaml``)."""
    global _registered
    if not _registered:
        ConfigStore.instance().store(name="base_config", node=Config)
        _registered = True


def to_config(cfg: DictConfig) -> Config:
    """Resolve interpolations, build the dataclass tree and validate it."""
    try:
        obj = OmegaConf.to_object(cfg)
    except Exception as exc:  # omegaconf raises several types; name the key it reports
        raise ConfigError(getattr(exc, "full_key", "config") or "config", str(exc)) from exc
    if not isinstance(obj, Config):
        raise ConfigError("config", f"expected the structured Config, got {type(obj).__name__}")
    return validate(obj)


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> Config:
    """Compose ``conf/`` with Hydra override strings, outside ``@hydra.main`` (tests, tools)."""
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    return to_config(cfg)


register_configs()
