"""Hand-built trajectories for the reward tests (unit and integration): laid-out turns,
the Paris/Rome sample with its hand-computed token positions, and a near-miss retrieval."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from workers.types import GroundTruth, RewardBatch, TrajectoryBatch, Turn

PARIS = "Paris is the capital of France"
ROME = "Rome lies on the Tiber river"


@dataclass(frozen=True)
class Step:
    """One turn to lay out: its kind, action and observation lengths in tokens, retrieval."""

    kind: str
    action: int
    obs: int = 0
    query: str | None = None
    ids: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    steps: tuple[Step, ...]
    text: str
    truth: GroundTruth
    sample_id: str = "s0"


def layout(steps: tuple[Step, ...]) -> tuple[tuple[Turn, ...], list[int]]:
    """Turns with consecutive spans, and the action mask (1 action, 0 observation)."""
    turns, mask, pos = [], [], 0
    for step in steps:
        a_end, o_end = pos + step.action, pos + step.action + step.obs
        turns.append(Turn(step.kind, pos, a_end, a_end, o_end, query=step.query,  # type: ignore[arg-type]
                          doc_ids=step.ids, doc_texts=step.texts))
        mask += [1] * step.action + [0] * step.obs
        pos = o_end
    return tuple(turns), mask


def make_batch(samples: list[Sample], pad: int = 2) -> TrajectoryBatch:
    """A TrajectoryBatch whose response is laid out from each sample's steps."""
    laid = [layout(s.steps) for s in samples]
    width = max(len(mask) for _, mask in laid) + pad
    action_mask = np.zeros((len(samples), width), dtype=np.int8)  # (B, T)
    for i, (_, mask) in enumerate(laid):
        action_mask[i, :len(mask)] = mask
    lengths = np.array([len(mask) for _, mask in laid], dtype=np.int64)
    return TrajectoryBatch(
        prompt_ids=np.ones((len(samples), 4), dtype=np.int32),
        prompt_lengths=np.full(len(samples), 4),
        response_ids=np.arange(len(samples) * width, dtype=np.int32).reshape(len(samples), width),
        response_lengths=lengths,
        action_mask=action_mask,
        rollout_logprobs=np.zeros((len(samples), width), dtype=np.float32),
        turns=tuple(turns for turns, _ in laid),
        response_text=tuple(s.text for s in samples),
        sample_ids=tuple(s.sample_id for s in samples),
        ground_truth=tuple(s.truth for s in samples),
        data_sources=tuple("toy" for _ in samples),
        policy_version=0,
    )


TRUTH = GroundTruth(target=("Paris",), search_keys=(("capital of France",), ("river of Rome",)),
                    support_docs=(PARIS, ROME))
# search 1: action [0, 4), obs [4, 9); search 2: action [9, 12), obs [12, 16);
# answer: action [16, 19). Step 1 retrieves both gold documents (G_1 = 1, P_1 = 0);
# step 2 retrieves p1 again (G_2 = 0, P_2 = 1). Both queries hit their key group exactly.
STEPS = (
    Step("search", 4, 5, "capital of France", ("p1", "r1"), (PARIS, ROME)),
    Step("search", 3, 4, "river of Rome", ("p1",), (PARIS,)),
    Step("answer", 3),
)
TEXT = ("<search> capital of France </search><information>...</information>"
        "<search> river of Rome </search><information>...</information><answer> Paris </answer>")
SAMPLE = Sample(STEPS, TEXT, TRUTH)


NEAR = "Lyon is the capital of a region of France"


def near_miss_sample() -> Sample:
    """Step 1 retrieves NEAR, which shares words with the gold documents but is neither;
    step 2 retrieves both gold documents."""
    steps = (Step("search", 4, 5, "capital of France", ("n1",), (NEAR,)),
             Step("search", 3, 4, "river of Rome", ("p1", "r1"), (PARIS, ROME)),
             Step("answer", 3))
    return Sample(steps, TEXT, TRUTH, sample_id="near")


def three_samples() -> TrajectoryBatch:
    wrong = replace(SAMPLE, text=TEXT.replace("> Paris <", "> Lyon <"), sample_id="s1")
    late = replace(SAMPLE, text=TEXT + "!", sample_id="s2")
    return make_batch([SAMPLE, wrong, late])


def assert_same(a: RewardBatch, b: RewardBatch) -> None:
    for name in ("token_rewards", "format_ok", "answer_f1", "exact_match", "key_score", "outcome",
                 "num_searches"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.step_gains == b.step_gains and a.step_penalties == b.step_penalties
