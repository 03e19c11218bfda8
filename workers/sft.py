"""The Ray-free parts of the supervised warm start (``actors.sft.SFTTrainer``).

Runs in the SFT driver (CPU): the learner config SFT trains with, the packed gold
trajectories (``workers.rollout.gold``) and their shuffled batches. Nothing here imports
Ray; the trainer hands the batches to the learner actors.
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from workers.config import Config, ConfigError, LearnerConfig
from workers.data.corpus import read_corpus_jsonl
from workers.data.prompt import encode_chat_prompt
from workers.data.renaming import NamePool, Renaming
from workers.data.rows import QARow
from workers.rollout.agent_loop import AgentLoop, LoopSettings, SearchFn
from workers.rollout.gold import first_action, gold_episodes
from workers.rollout.worker import pack_episodes
from workers.types import TrajectoryBatch

logger = logging.getLogger(__name__)


def sft_learner_config(cfg: Config) -> LearnerConfig:
    """The learner for SFT: policy only (no critic, no reference), SFT's rates and batches.

    ``sft.micro_batch_size`` is an upper bound: a rank's share of ``sft.batch_size`` may be
    smaller (16 trajectories over 8 GPU ranks are 2 a rank)."""
    micro = min(cfg.sft.micro_batch_size, cfg.sft.batch_size // cfg.learner.num_ranks)
    return replace(cfg.learner, advantage_estimator="grpo", kl_coef=0.0, use_kl_loss=False,
                   actor_lr=cfg.sft.lr, warmup_steps=cfg.sft.warmup_steps, lr_schedule=cfg.sft.lr_schedule,
                   actor_warmup_ratio=None, critic_warmup_ratio=None,
                   mini_batch_size=cfg.sft.batch_size, micro_batch_size=micro)


def check_renaming(cfg: Config, rows: list[QARow]) -> None:
    """``sft.rename_entities`` swaps names between entities: only sound in an invented world."""
    if cfg.sft.rename_entities and (other := sorted({r.data_source for r in rows} - {"toyworld"})):
        raise ConfigError("sft.rename_entities", f"is for data=toyworld rows only (invented names); the "
                                                 f"training rows come from {', '.join(other)}")


def name_pool(data_dir: Path, rows: list[QARow]) -> NamePool:
    """The world's names: its paragraphs' titles and the training answers (currencies)."""
    titles = [p.title for p in read_corpus_jsonl(data_dir / "corpus.jsonl")]
    return NamePool([*titles, *(t for row in rows for t in row.ground_truth.target)])


def build_gold(cfg: Config, model_path: str, rows: list[QARow], search: SearchFn,
               rename: tuple[NamePool, int | str] | None = None, first_only: bool = False,
               early_seed: int | str = 0) -> list[TrajectoryBatch]:
    """Packed gold trajectories of ``rows`` (rows whose episode does not fit are dropped).

    ``rename`` = (pool, seed): every row's entities take names drawn from the pool with
    that seed (``sft.rename_entities``); the packed rows are the renamed ones.
    ``first_only``: each trajectory cut after its first search (``sft.first_search_steps``).
    ``early_seed``: draws the rows that answer one search early (``sft.early_answer_share``).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    settings = LoopSettings.from_config(cfg.rollout, cfg.retrieval.topk)
    if first_only:  # one search is all that is kept: retrieve for the first hop only
        settings = replace(settings, max_turns=1)
    loop = AgentLoop(None, tokenizer, search, settings)  # type: ignore[arg-type]
    renamings = None
    if rename is not None:
        pool, seed = rename
        rng = random.Random(seed)
        renamings = [Renaming.draw(row, pool, rng) for row in rows]
    shown = rows if renamings is None else [r.row(row) for r, row in zip(renamings, rows, strict=True)]
    prompts = [encode_chat_prompt(tokenizer, row.prompt) for row in shown]
    share = 0.0 if first_only else cfg.sft.early_answer_share
    early_rng = random.Random(early_seed)
    early = [early_rng.random() < share for _ in rows] if share > 0 else None
    episodes = gold_episodes(rows, prompts, loop, search, renamings, early)
    if first_only:
        episodes = [first_action(e) for e in episodes]
    limit = cfg.rollout.max_response_tokens
    kept = [(e, r) for e, r in zip(episodes, shown, strict=True) if len(e.response_ids) <= limit]
    if len(kept) < len(shown):  # a rollout could never produce these: do not teach them
        logger.warning("dropped %d of %d gold trajectories longer than rollout.max_response_tokens=%d",
                       len(shown) - len(kept), len(shown), limit)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [pack_episodes([e], [r], [r.id], [str(tokenizer.decode(e.response_ids))], pad, 0) for e, r in kept]


def sft_batches(gold: list[Any], cfg: Config, epoch: int) -> list[list[Any]]:
    """Shuffled calls of ``sft.steps_per_call`` optimizer steps each (the tail that does not
    fill a step is dropped)."""
    import numpy as np

    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(gold))
    per_call = cfg.sft.batch_size * cfg.sft.steps_per_call
    usable = len(order) // cfg.sft.batch_size * cfg.sft.batch_size
    return [[gold[i] for i in order[s:min(s + per_call, usable)]] for s in range(0, usable, per_call)]
