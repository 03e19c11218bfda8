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
        overrides += ["trainer.batch_size=256"]
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
    (["trainer=tiny", "learner.advantage_estimator=grpo"], "rollout.n_samples"),
    (["cluster.placement=mixed"], "cluster.placement"),
    (["retrieval.replicas=per_gpu"], "retrieval.replicas"),
    (["retrieval.backend=http"], "retrieval.url"),
    (["retrieval.backend=http", "retrieval.url=localhost:8000"], "retrieval.url"),
    (["rollout.sleep_level=1"], "rollout.sleep_level"),
    (["cluster.placement=colocated", "rollout.sleep_level=1", "trainer.async_rollout=true"], "rollout.sleep_level"),
    (["learner.actor_warmup_ratio=1.5"], "learner.actor_warmup_ratio"),
    (["learner.logprob_micro_batch_size=0"], "learner.logprob_micro_batch_size"),
    (["learner.num_ranks=8", "learner.micro_batch_size=1", "sft.batch_size=12"], "sft.batch_size"),
    (["sft.micro_batch_size=3"], "sft.micro_batch_size"),
    (["retrieval.topk=0"], "retrieval.topk"),
    (["server.port=70000"], "server.port"),
    (["data.toyworld.hops=[5]"], "data.toyworld.hops"),
    (["learner.num_threads=0"], "learner.num_threads"),
    (["sft.first_search_steps=-1"], "sft.first_search_steps"),
    (["sft.early_answer_share=1.5"], "sft.early_answer_share"),
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
    from workers.data.rows import make_row
    from workers.sft import check_renaming

    def row(source: str):
        return make_row(id="r", data_source=source, question="q", targets=["a"], search_keys=[], support_docs=[],
                        support_doc_ids=[], split="train", index=0, num_hops=0)

    cfg = load_config(["sft.rename_entities=true"])
    check_renaming(cfg, [row("toyworld")])
    with pytest.raises(ConfigError, match=r"sft\.rename_entities.*musique"):
        check_renaming(cfg, [row("toyworld"), row("musique")])
    check_renaming(load_config(["sft.rename_entities=false"]), [row("musique")])  # off: anything goes


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
    assert cfg.sft.early_answer_share == 0.5  # the quick start's warm start answers too soon, half the time
    assert bare.sft.early_answer_share == learning.sft.early_answer_share == 0.0  # complete demonstrations



PAPER_COMMAND = ["model=qwen2.5-3b", "data=musique", "retrieval=e5_gpu", "rollout=gpu", "learner=zero3_gpu",
                 "trainer=paper", "cluster=gpu_node"]
"""The README's paper command: it stopped at data.input_path and sft.batch_size."""


def test_the_readme_paper_command_composes_and_validates() -> None:
    cfg = load_config(PAPER_COMMAND)
    assert cfg.data.name == "musique" and cfg.data.input_path is None  # trains from data.output_dir
    assert cfg.learner.num_ranks == 8 and cfg.sft.batch_size == 16  # 2 trajectories a rank
    assert cfg.cluster.placement == "colocated"


def test_prepare_data_alone_needs_the_input_path(capsys: pytest.CaptureFixture[str]) -> None:
    from launch.cli import run_tool
    from launch.prepare_data import main as prepare_main

    assert run_tool(prepare_main, ["data=musique"]) == 2
    assert "data.input_path" in capsys.readouterr().err


def test_sft_micro_batches_are_capped_at_a_ranks_share() -> None:
    from workers.sft import sft_learner_config

    cfg = load_config(["learner.num_ranks=8", "learner.micro_batch_size=1", "sft.batch_size=16",
                       "sft.micro_batch_size=8"])
    assert sft_learner_config(cfg).micro_batch_size == 2
    assert sft_learner_config(load_config()).micro_batch_size == 8  # one rank: unchanged


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_the_release_presets_carry_the_release_settings(size: str) -> None:
    cfg = load_config([f"+experiment=stepsearch_{size}"])
    assert cfg.model.path == f"Qwen/Qwen2.5-{size.upper()}" and cfg.data.name == "musique"
    assert cfg.cluster.placement == "colocated" and cfg.learner.num_ranks == 8
    ro, ln, tr = cfg.rollout, cfg.learner, cfg.trainer
    assert (ro.num_workers * ro.tensor_parallel_size, ro.tensor_parallel_size, ro.temperature) == (8, 4, 1.0)
    assert (ro.max_turns, ro.max_action_tokens, ro.max_obs_tokens, ro.max_prompt_tokens) == (5, 800, 800, 4096)
    assert (tr.batch_size, ro.n_samples, ln.mini_batch_size, tr.total_steps) == (128, 1, 32, 1120)
    assert ln.micro_batch_size * ln.num_ranks == 16 and ln.logprob_micro_batch_size * ln.num_ranks == 16
    assert (ln.actor_lr, ln.critic_lr, ln.actor_warmup_ratio, ln.critic_warmup_ratio) == (5e-7, 5e-7, 0.285, 0.05)
    assert ln.gradient_checkpointing and ln.advantage_estimator == "gae" and not ln.use_kl_loss
    assert (ln.kl_coef, tr.critic_warmup_steps, tr.eval_every, tr.save_every) == (0.001, 0, 60, 60)
    assert (cfg.retrieval.topk, cfg.retrieval.encoder, cfg.retrieval.replicas) == (3, "intfloat/e5-base-v2", "per_node")
    assert ro.gpu_memory_utilization == (0.6 if size == "3b" else 0.45)  # 7B: our choice (launch.plan)
