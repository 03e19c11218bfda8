"""Every preset composes and validates; bad values fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.config import CONFIG_DIR, load_config
from workers.config import Config, ConfigError, validate

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir())
PRESETS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))]
NEEDS_INPUT = {"musique", "hotpotqa", "2wiki", "bamboogle", "nq", "flashrag"}
ADDED = {"experiment"}
"""Groups not in the defaults list: selected with ``+group=preset``."""


def test_the_groups_the_design_names_exist() -> None:
    assert {"model", "data", "retrieval", "rollout", "reward", "learner", "cluster"} <= set(GROUPS)
    names = {f"{g}/{p}" for g, p in PRESETS}
    assert {"model/tiny", "model/qwen2.5-3b", "model/qwen2.5-7b", "data/toyworld", "data/musique",
            "data/hotpotqa", "reward/stepsearch", "reward/outcome_only", "cluster/local",
            "cluster/gpu_node"} <= names


@pytest.mark.parametrize(("group", "preset"), PRESETS, ids=[f"{g}={p}" for g, p in PRESETS])
def test_every_preset_composes_and_validates(group: str, preset: str) -> None:
    overrides = [f"{'+' if group in ADDED else ''}{group}={preset}"]
    if preset in NEEDS_INPUT:
        overrides.append("data.input_path=some/file.json")
    if preset == "flashrag":
        overrides.append("data.name=popqa")
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
    (["learner.num_threads=0"], "learner.num_threads"),
    (["sft.first_search_steps=-1"], "sft.first_search_steps"),
    (["trainer.critic_warmup_steps=-1"], "trainer.critic_warmup_steps"),
    (["reward.info_gain_idf=global"], "reward.info_gain_idf"),
    (["trainer.critic_warmup_steps=2", "learner.advantage_estimator=grpo", "rollout.n_samples=2"],
     "trainer.critic_warmup_steps"),
    (["sft.lr_schedule=linear"], "sft.lr_schedule"),
    (["learner.engine=torch", "learner.precision=bf16"], "learner.precision"),
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


def test_the_learning_experiment_preset_composes_with_every_reward_arm() -> None:
    for arm in ("stepsearch", "outcome_only"):
        cfg = load_config(["+experiment=toyworld_learning", f"reward={arm}"])
        assert cfg.reward.name == arm and cfg.rollout.max_turns == 4
        assert cfg.data.output_dir != load_config().data.output_dir  # its own, larger world


def test_learner_threads_default_to_the_cores_shared_among_ranks() -> None:
    import os

    from workers.learner.worker import cpu_threads

    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(Config().learner) == cores
    two = Config().learner
    two.num_ranks = 2
    assert cpu_threads(two) == max(1, cores // 2)
    two.num_threads = 3
    assert cpu_threads(two) == 3


def test_renaming_entities_is_refused_for_real_datasets() -> None:
    from launch.sft import check_renaming
    from workers.data.rows import make_row

    def row(source: str):
        return make_row(id="r", data_source=source, question="q", targets=["a"], search_keys=[], support_docs=[],
                        support_doc_ids=[], split="train", index=0, num_hops=0)

    cfg = load_config(["sft.rename_entities=true"])
    check_renaming(cfg, [row("toyworld")])
    with pytest.raises(ConfigError, match=r"sft\.rename_entities.*musique"):
        check_renaming(cfg, [row("toyworld"), row("musique")])
    check_renaming(load_config(["trainer=tiny"]), [row("musique")])  # off: anything goes


def test_the_quick_start_is_the_default_and_the_learning_preset_is_unchanged_by_it() -> None:
    cfg = load_config()
    assert cfg.model.warm_start == "sft" and cfg.model.path is None
    assert cfg.data.toyworld.hops == [2, 3] and cfg.rollout.max_turns >= 3
    assert cfg.trainer.eval_start and cfg.trainer.eval_size >= 64 and cfg.trainer.critic_warmup_steps > 0
    bare = load_config(["trainer=tiny"])
    assert bare.model.warm_start == "none" and bare.trainer.critic_warmup_steps == 0
    learning = load_config(["+experiment=toyworld_learning"])
    assert learning.model.warm_start == "none"  # composed on trainer=tiny, as before the quick start
    assert learning.data.toyworld.hops == [2, 3, 4] and learning.trainer.eval_size == 128
