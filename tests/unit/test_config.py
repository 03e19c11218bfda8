"""Every preset composes and validates; bad values fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.config import CONFIG_DIR, load_config
from workers.config import Config, ConfigError, validate

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir())
PRESETS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))]
NEEDS_INPUT = {"musique", "hotpotqa"}


def test_the_groups_the_design_names_exist() -> None:
    assert {"model", "data", "retrieval", "rollout", "reward", "learner", "cluster"} <= set(GROUPS)
    names = {f"{g}/{p}" for g, p in PRESETS}
    assert {"model/tiny", "model/qwen2.5-3b", "model/qwen2.5-7b", "data/toyworld", "data/musique",
            "data/hotpotqa", "reward/stepsearch", "reward/outcome_only", "cluster/local",
            "cluster/gpu_node"} <= names


@pytest.mark.parametrize(("group", "preset"), PRESETS, ids=[f"{g}={p}" for g, p in PRESETS])
def test_every_preset_composes_and_validates(group: str, preset: str) -> None:
    overrides = [f"{group}={preset}"]
    if preset in NEEDS_INPUT:
        overrides.append("data.input_path=some/file.json")
    if group == "learner" and preset != "cpu":
        overrides += ["trainer.batch_size=256", "sft.batch_size=64"]
    cfg = load_config(overrides)
    assert isinstance(cfg, Config)
    if group in ("reward", "model", "cluster"):
        assert getattr(cfg, group).name == preset


def test_default_is_the_tiny_cpu_preset_on_toyworld() -> None:
    cfg = load_config()
    chosen = (cfg.model.path, cfg.data.name, cfg.rollout.engine, cfg.reward.name)
    assert chosen == (None, "toyworld", "vllm", "stepsearch")
    assert cfg.cluster.loopback and cfg.server.host == "127.0.0.1"


def test_reward_presets_switch_the_right_terms() -> None:
    base = load_config(["reward=stepsearch"]).reward
    assert (base.use_info_gain, base.use_redundancy, base.use_search_key) == (True, True, True)
    assert (base.key_weight, base.step_reward_scale, base.format_penalty) == (0.618, 0.6, -1.0)
    outcome = load_config(["reward=outcome_only"]).reward
    assert (outcome.answer_metric, outcome.use_info_gain, outcome.use_redundancy, outcome.use_search_key) == (
        "em", False, False, False)
    assert load_config(["reward=no_info_gain"]).reward.use_info_gain is False
    assert load_config(["reward=no_redundancy"]).reward.use_redundancy is False
    assert load_config(["reward=no_search_key"]).reward.use_search_key is False


@pytest.mark.parametrize(("override", "field"), [
    (["model.tiny.num_heads=16"], "model.tiny.num_heads"),
    (["rollout.top_p=1.5"], "rollout.top_p"),
    (["rollout.engine=tgi"], "rollout.engine"),
    (["learner.mini_batch_size=6"], "learner.micro_batch_size"),
    (["learner.num_ranks=3"], "learner.mini_batch_size"),
    (["learner.advantage_estimator=grpo"], "rollout.n_samples"),
    (["data=musique"], "data.input_path"),
    (["retrieval.topk=0"], "retrieval.topk"),
    (["server.port=70000"], "server.port"),
    (["data.toyworld.hops=[5]"], "data.toyworld.hops"),
])
def test_bad_values_fail_fast_naming_the_field(override: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(override)
    assert info.value.field_name == field
    assert str(info.value).startswith(field + ":")


def test_validate_works_on_plain_dataclasses() -> None:
    cfg = Config()
    cfg.reward.answer_metric = "bleu"
    with pytest.raises(ConfigError, match=r"reward.answer_metric: must be one of \['f1', 'em'\]"):
        validate(cfg)
