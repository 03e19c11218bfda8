"""Can a policy answer once the searches are right? Teacher-forced answers on gold trajectories.

    python -m launch.experiments.answer_probe policy=DIR +experiment=toyworld_learning
    python -m launch.experiments.answer_probe policy=DIR split=test per_hops=40 data=musique ...

For up to ``per_hops`` rows of each hop count in ``split`` (default ``train``), builds the
gold trajectory the SFT stage trains on (one search per sub-question with the real
retriever's documents, then ``<answer> target </answer>``; ``launch.sft``), feeds it to
the policy and scores the answer turn alone: its probability given everything before
it, and whether greedy decoding would write it token for token. A policy that searches
well but cannot answer after k searches shows it here, without sampling. Every other
``key=value`` is a Hydra override (data, retrieval, rollout limits). Ray-free: the
retriever and the policy run in this process.
"""

from __future__ import annotations

import logging
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from launch.cli import run_tool, split_tool_args
from launch.train import _prepare_inputs
from workers.config import Config, ConfigError
from workers.data.rows import QARow, read_rows
from workers.sft import build_gold
from workers.types import TrajectoryBatch

logger = logging.getLogger(__name__)

TOOL_ARGS = ("policy", "split", "per_hops")


def answer_scores(model: Any, gold: TrajectoryBatch) -> tuple[float, bool]:
    """(probability of the answer turn's tokens, greedy writes them all) for one gold trajectory."""
    answer = gold.turns[0][-1]
    if answer.kind != "answer":
        raise ValueError(f"{gold.sample_ids[0]}: the gold trajectory does not end on an answer")
    p_len = int(gold.prompt_lengths[0])
    prompt = gold.prompt_ids[0][gold.prompt_ids.shape[1] - p_len:]
    ids = np.concatenate([prompt, gold.response_ids[0][:answer.action_end]]).astype(np.int64)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids)[None]).logits[0].float()
    start, end = p_len + answer.action_start, p_len + answer.action_end
    target = torch.from_numpy(ids[start:end])
    predicted = logits[start - 1:end - 1]  # (answer tokens, V): each from the position before it
    logp = torch.log_softmax(predicted, dim=-1).gather(-1, target[:, None]).sum()
    return float(logp.exp()), bool((predicted.argmax(-1) == target).all())


def probe(cfg: Config, policy: str, rows: list[QARow], per_hops: int) -> dict[int, list[tuple[float, bool]]]:
    """Scores per hop count (rows without a hop count or search keys are skipped)."""
    from transformers import AutoModelForCausalLM

    from retrieval_service.retriever import build_retriever

    by_hops: dict[int, list[QARow]] = {}
    for row in rows:
        if row.num_hops > 0 and row.ground_truth.search_keys and len(by_hops.get(row.num_hops, [])) < per_hops:
            by_hops.setdefault(row.num_hops, []).append(row)
    if not by_hops:
        raise ConfigError("split", "has no rows with a hop count and search keys to build gold trajectories from")
    retriever = build_retriever(cfg.retrieval, progress=True)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    scores: dict[int, list[tuple[float, bool]]] = {}
    for hops, chosen in sorted(by_hops.items()):
        golds = build_gold(cfg, policy, chosen, retriever.search)  # longer than the rollout limit: dropped
        scores[hops] = [answer_scores(model, g) for g in golds]
    return scores


def report(scores: dict[int, list[tuple[float, bool]]]) -> str:
    lines = [f"{'hops':>5}{'rows':>6}{'P(answer) median':>18}{'P(answer) > 0.5':>17}{'greedy writes it':>18}"]
    for hops, values in scores.items():
        if not values:
            lines.append(f"{hops:>5}{0:>6}   (every gold trajectory is longer than rollout.max_response_tokens)")
            continue
        probs = [p for p, _ in values]
        lines.append(f"{hops:>5}{len(values):>6}{statistics.median(probs):>18.3f}"
                     f"{sum(p > 0.5 for p in probs) / len(probs):>17.2f}"
                     f"{sum(g for _, g in values) / len(values):>18.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, overrides = split_tool_args(sys.argv[1:] if argv is None else argv, TOOL_ARGS)

    def run(cfg: Config) -> int:
        policy = args.get("policy")
        if not policy or not (Path(policy) / "config.json").is_file():
            raise ConfigError("policy", f"{policy!r} is not a Hugging Face model directory (no config.json)")
        try:
            per_hops = int(args.get("per_hops", "20"))
        except ValueError as exc:
            raise ConfigError("per_hops", f"expected an integer, got {args['per_hops']!r}") from exc
        if per_hops < 1:
            raise ConfigError("per_hops", f"must be at least 1, got {per_hops}")
        cfg, _ = _prepare_inputs(replace(cfg, model=replace(cfg.model, path=policy)))  # no tiny policy built
        split = args.get("split", "train")
        path = Path(cfg.data.output_dir) / f"{split}.{cfg.data.format}"
        if not path.is_file():
            raise ConfigError("split", f"no {path}")
        scores = probe(cfg, policy, read_rows(path), per_hops)
        print(f"policy {policy}, {split} split: the gold answer turn after the gold searches, teacher-forced")
        print(report(scores))
        return 0

    return run_tool(run, overrides, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())
