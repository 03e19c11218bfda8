"""Structured configuration: one dataclass per component (DESIGN.md 2, CONVENTIONS "Config").

Plain dataclasses, importable without Hydra or Ray; ``launch.config`` registers them in
Hydra's ConfigStore and the YAML presets under ``conf/`` pick and override them. Each
worker receives only its own sub-config. ``validate`` is the one place that checks
values; it fails fast with the field's dotted name.

The dataclasses live in ``schema``, the checks in ``checks``; everything is importable
from ``workers.config``.
"""

from workers.config.checks import validate
from workers.config.schema import (
    ClusterConfig,
    Config,
    ConfigError,
    DataConfig,
    LearnerConfig,
    ModelConfig,
    RetrievalConfig,
    RewardConfig,
    RolloutConfig,
    ServerConfig,
    SFTConfig,
    TinyModelConfig,
    ToyWorldConfig,
    TrainerConfig,
)

__all__ = [
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "LearnerConfig",
    "ModelConfig",
    "RetrievalConfig",
    "RewardConfig",
    "RolloutConfig",
    "SFTConfig",
    "ServerConfig",
    "TinyModelConfig",
    "ToyWorldConfig",
    "TrainerConfig",
    "validate",
]
