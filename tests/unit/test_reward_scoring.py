"""RewardWorker on hand-built trajectories: token placement, presets, malformed input, shards."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest

from launch.config import load_config
from tests.support.reward_samples import (
    NEAR,
    PARIS,
    ROME,
    SAMPLE,
    STEPS,
    TEXT,
    TRUTH,
    Sample,
    Step,
    assert_same,
    make_batch,
    near_miss_sample,
    three_samples,
)
from workers.config import ConfigError, RewardConfig
from workers.reward import (
    CorpusIdf,
    MalformedTrajectoryError,
    RewardTotals,
    RewardWorker,
    concat_reward_batches,
    information_gains,
    last_action_index,
    reward_metrics,
    shard_range,
)
from workers.types import GroundTruth, TrajectoryBatch


def expected_vector(entries: dict[int, float], width: int = 21) -> np.ndarray:
    vector = np.zeros(width, dtype=np.float32)
    for index, value in entries.items():
        vector[index] = value
    return vector


@pytest.mark.parametrize("preset, entries, key", [
    ("stepsearch", {3: 0.6 * (1 - 0), 11: 0.6 * (0 - 1), 18: 1 + 0.618}, 1.0),
    ("no_info_gain", {11: -0.6, 18: 1.618}, 1.0),
    ("no_redundancy", {3: 0.6, 18: 1.618}, 1.0),
    ("no_search_key", {3: 0.6, 11: -0.6, 18: 1.0}, 0.0),
    ("outcome_only", {18: 1.0}, 0.0),  # answer EM only
])
def test_presets_place_hand_computed_token_rewards(preset: str, entries: dict[int, float],
                                                   key: float) -> None:
    cfg = load_config([f"reward={preset}"]).reward
    rewards = RewardWorker(cfg).score(make_batch([SAMPLE]))
    assert rewards.token_rewards.shape == (1, 21)
    assert rewards.token_rewards.dtype == np.float32
    np.testing.assert_allclose(rewards.token_rewards[0], expected_vector(entries), atol=1e-6)
    assert rewards.format_ok.tolist() == [True]
    assert rewards.answer_f1.tolist() == [1.0] and rewards.exact_match.tolist() == [1.0]
    assert rewards.key_score.tolist() == [key]
    assert rewards.num_searches.tolist() == [2]
    assert rewards.step_gains == (((1.0, 0.0) if cfg.use_info_gain else (0.0, 0.0)),)
    assert rewards.step_penalties == (((0.0, 1.0) if cfg.use_redundancy else (0.0, 0.0)),)


def test_observation_and_padding_tokens_get_nothing() -> None:
    batch = make_batch([SAMPLE])
    rewards = RewardWorker(RewardConfig()).score(batch)
    assert not rewards.token_rewards[0][batch.action_mask[0] == 0].any()


def test_partial_answer_f1() -> None:
    # "Paris France" vs "Paris": p = 1/2, r = 1 -> F1 2/3; EM 0.
    sample = replace(SAMPLE, text=TEXT.replace("> Paris <", "> Paris France <"))
    rewards = RewardWorker(RewardConfig()).score(make_batch([sample]))
    assert rewards.answer_f1[0] == pytest.approx(2 / 3)
    assert rewards.exact_match[0] == 0.0
    assert rewards.outcome[0] == pytest.approx(2 / 3 + 0.618)
    assert rewards.token_rewards[0, 18] == pytest.approx(2 / 3 + 0.618)


@pytest.mark.parametrize("text", [TEXT + " Hope this helps.",  # text after </answer>
                                  TEXT.replace("<answer> Paris </answer>", "Paris")])  # none
def test_bad_format_gets_the_penalty_and_no_step_rewards(text: str) -> None:
    rewards = RewardWorker(RewardConfig()).score(make_batch([replace(SAMPLE, text=text)]))
    np.testing.assert_array_equal(rewards.token_rewards[0], expected_vector({18: -1.0}))
    assert rewards.format_ok.tolist() == [False]
    assert rewards.outcome.tolist() == [-1.0]
    # The breakdown still describes the episode.
    assert rewards.step_gains == ((1.0, 0.0),) and rewards.step_penalties == ((0.0, 1.0),)


def test_response_ending_in_a_search_is_penalized_on_its_last_action_token() -> None:
    sample = Sample(STEPS[:2], TEXT.split("<answer>")[0], TRUTH)
    rewards = RewardWorker(RewardConfig()).score(make_batch([sample]))
    assert rewards.token_rewards[0].tolist() == expected_vector({11: -1.0}, width=18).tolist()


def test_empty_retrieval_step_and_ids_fallback_to_texts() -> None:
    steps = (Step("search", 2, 1, "capital of France"),  # retrieved nothing
             Step("search", 2, 1, "capital of France", (), (PARIS, PARIS)),  # no ids: texts
             Step("answer", 2))
    text = "<search>a</search><search>b</search><answer>Paris</answer>"
    rewards = RewardWorker(RewardConfig()).score(make_batch([Sample(steps, text, TRUTH)]))
    assert rewards.step_gains == ((0.0, 0.5),)  # gold 0 found: (1 + 0) / 2
    assert rewards.step_penalties == ((0.0, 0.5),)  # the second PARIS repeats the first
    # both queries go to group 0 -> key 1/2; step rewards 0 and 0.6 * (0.5 - 0.5) = 0
    np.testing.assert_allclose(rewards.token_rewards[0],
                               expected_vector({7: 1 + 0.618 * 0.5}, width=10), atol=1e-6)


def test_invalid_turns_get_no_step_reward() -> None:
    steps = (Step("invalid", 2, 2), Step("answer", 2))
    rewards = RewardWorker(RewardConfig()).score(
        make_batch([Sample(steps, "<searc>x<answer>Paris</answer>", TRUTH)]))
    assert rewards.num_searches.tolist() == [0]
    assert rewards.step_gains == ((),)
    assert rewards.token_rewards[0].tolist() == expected_vector({5: 1.0}, width=8).tolist()


def _malformed(sample: Sample, batch_edit: dict | None = None) -> TrajectoryBatch:
    batch = make_batch([SAMPLE, replace(sample, sample_id="bad-7")])
    return replace(batch, **(batch_edit or {}))


@pytest.mark.parametrize("batch, reason", [
    (_malformed(replace(SAMPLE, steps=())), "no turns"),
    (_malformed(replace(SAMPLE, truth=replace(TRUTH, target=()))), "no target"),
    (_malformed(replace(SAMPLE, truth=replace(TRUTH, support_docs=()))), "support_docs"),
    (_malformed(replace(SAMPLE, truth=replace(TRUTH, search_keys=()))), "search_keys"),
    (_malformed(replace(SAMPLE, steps=(replace(STEPS[0], query=None), *STEPS[1:]))), "no query"),
    (_malformed(SAMPLE, {"response_lengths": np.array([19, 30])}), "response length"),
    (_malformed(SAMPLE, {"response_lengths": np.array([19, 15])}), "outside the response"),
    (_malformed(SAMPLE, {"action_mask": np.vstack([make_batch([SAMPLE]).action_mask,
                                                   np.zeros((1, 21), dtype=np.int8)])}),
     "not an action token"),
])
def test_malformed_trajectories_raise_naming_the_sample(batch: TrajectoryBatch, reason: str) -> None:
    with pytest.raises(MalformedTrajectoryError, match=reason) as info:
        RewardWorker(RewardConfig()).score(batch)
    assert info.value.sample_id == "bad-7"
    assert "'bad-7'" in str(info.value)


def test_missing_support_docs_are_fine_when_unused() -> None:
    truth = GroundTruth(target=("Paris",))
    cfg = load_config(["reward=outcome_only"]).reward
    rewards = RewardWorker(cfg).score(make_batch([replace(SAMPLE, truth=truth)]))
    assert rewards.outcome.tolist() == [1.0]


def test_no_action_token_raises() -> None:
    steps = (Step("answer", 2),)
    batch = make_batch([Sample(steps, "<answer>Paris</answer>", TRUTH)])
    batch = replace(batch, action_mask=np.zeros_like(batch.action_mask))
    with pytest.raises(MalformedTrajectoryError, match="no action token"):
        RewardWorker(replace(RewardConfig(), use_info_gain=False)).score(batch)


def test_error_survives_pickling() -> None:  # Ray ships actor errors pickled
    error = pickle.loads(pickle.dumps(MalformedTrajectoryError("x1", "has no turns")))
    assert (error.sample_id, error.reason, str(error)) == ("x1", "has no turns",
                                                         "sample 'x1': has no turns")


def test_bad_metric_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"reward\.answer_metric"):
        RewardWorker(RewardConfig(answer_metric="bleu"))


def test_corpus_idf_needs_document_frequencies() -> None:
    corpus_cfg = RewardConfig(info_gain_idf="corpus")
    with pytest.raises(ConfigError, match=r"reward\.info_gain_idf"):
        RewardWorker(corpus_cfg)
    with pytest.raises(ConfigError, match=r"reward\.info_gain_idf"):
        RewardWorker(RewardConfig(info_gain_idf="global"))
    RewardWorker(replace(corpus_cfg, use_info_gain=False))  # nothing to weigh: no idf needed


def test_corpus_idf_changes_only_the_information_gain() -> None:
    batch, near = make_batch([near_miss_sample()]), NEAR
    idf = CorpusIdf.from_texts([PARIS, ROME, near, "Lyon is a city of France", "Rome is a city of Italy"])
    pair = RewardWorker(RewardConfig()).score(batch)
    corpus = RewardWorker(RewardConfig(info_gain_idf="corpus"), idf).score(batch)
    steps_pair, steps_corpus = pair.token_rewards[0, [3, 11]], corpus.token_rewards[0, [3, 11]]
    expected = [0.6 * g for g in information_gains([[near], [PARIS, ROME]], [PARIS, ROME], idf.cosines)]
    np.testing.assert_allclose(steps_corpus, expected, rtol=1e-6)
    assert not np.allclose(steps_pair, steps_corpus)
    assert steps_pair.sum() == pytest.approx(steps_corpus.sum())  # the gains add up to 1 either way
    np.testing.assert_array_equal(pair.outcome, corpus.outcome)
    np.testing.assert_array_equal(pair.token_rewards[0, 18], corpus.token_rewards[0, 18])


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
def test_sharded_scoring_equals_whole_batch(num_shards: int) -> None:
    batch, worker = three_samples(), RewardWorker(RewardConfig())
    whole = worker.score(batch)
    parts = [worker.score_shard(batch, k, num_shards) for k in range(num_shards)]
    assert_same(concat_reward_batches(parts), whole)
    assert whole.outcome.tolist() == pytest.approx([1.618, 0.618, -1.0])


def test_shard_range_covers_everything_once() -> None:
    for size in range(7):
        for count in range(1, 5):
            ranges = [shard_range(size, k, count) for k in range(count)]
            assert [i for a, b in ranges for i in range(a, b)] == list(range(size))


def test_reward_metrics() -> None:
    metrics = reward_metrics(RewardWorker(RewardConfig()).score(three_samples()))
    assert metrics["reward/outcome"] == pytest.approx((1.618 + 0.618 - 1.0) / 3)
    assert metrics["reward/format_ok"] == pytest.approx(2 / 3)
    assert metrics["reward/info_gain"] == pytest.approx(0.5)
    assert metrics["reward/redundancy"] == pytest.approx(0.5)
    assert metrics["reward/num_searches"] == 2.0


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
def test_shard_totals_add_up_to_the_whole_batchs_metrics(num_shards: int) -> None:
    batch, worker = three_samples(), RewardWorker(RewardConfig())
    totals = [worker.score_shard_totals(batch, k, num_shards)[1] for k in range(num_shards)]
    metrics = sum(totals, RewardTotals()).metrics()
    assert sum(t.samples for t in totals) == 3
    assert metrics["reward/outcome"] == pytest.approx((1.618 + 0.618 - 1.0) / 3)
    assert metrics["reward/format_ok"] == pytest.approx(2 / 3)
    assert metrics["reward/info_gain"] == pytest.approx(0.5)  # a mean over search steps, not shards
    assert metrics["reward/redundancy"] == pytest.approx(0.5)
    assert metrics["reward/num_searches"] == 2.0
    assert RewardTotals().metrics() == {}


def test_last_action_index_ignores_tokens_past_the_length() -> None:
    assert last_action_index(np.array([1, 0, 1, 1]), 2) == 0
    assert last_action_index(np.array([0, 0]), 2) == -1


def test_inconsistent_batch_columns_raise() -> None:
    batch = make_batch([SAMPLE, replace(SAMPLE, sample_id="s1")])
    with pytest.raises(ValueError, match=r"TrajectoryBatch\.sample_ids has 1 entries for 2"):
        RewardWorker(RewardConfig()).score(replace(batch, sample_ids=("s0",)))
