"""Supervised warm start: teach a policy the search protocol from gold trajectories.

    python -m launch.sft                                  # tiny policy on toyworld
    python -m launch.sft sft.epochs=2 sft.lr=1e-5 model=qwen2.5-3b data=musique ...

Gold trajectories come from the dataset's decompositions (``workers.rollout.gold``): one
search per sub-question with the real retriever's documents, then the answer; the loss is
on the policy's tokens only. Training runs on the DeepSpeed learner (same Hydra tree,
``learner.*`` for ranks and ZeRO); validation runs greedy rollouts through the rollout
workers. The result is a Hugging Face directory (``<run dir>/checkpoints/step_N/learner/hf``)
to start StePPO from: ``python -m launch.train model.path=<that directory>``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import ray
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from actors.cluster import init_ray
from actors.learner import LearnerGroup
from actors.retrieval import RetrievalGroup
from actors.rollout import RolloutGroup
from launch.config import CONFIG_DIR, register_configs, to_config
from launch.report import SFT_PLOT_GROUPS, progress_bar, write_plots
from launch.train import _prepare_inputs
from workers.config import Config, ConfigError, LearnerConfig
from workers.data.corpus import read_corpus_jsonl
from workers.data.rows import QARow, read_rows
from workers.evaluation import evaluate_trajectories
from workers.rollout.agent_loop import AgentLoop, LoopSettings
from workers.rollout.gold import NamePool, Renaming, first_action, gold_episodes
from workers.rollout.worker import pack_episodes
from workers.tracking import MetricsLogger, begin_checkpoint, commit_checkpoint

logger = logging.getLogger("launch.sft")


def sft_learner_config(cfg: Config) -> LearnerConfig:
    """The learner for SFT: policy only (no critic, no reference), SFT's rates and batches.

    ``sft.micro_batch_size`` is an upper bound: a rank's share of ``sft.batch_size`` may be
    smaller (16 trajectories over 8 GPU ranks are 2 a rank)."""
    micro = min(cfg.sft.micro_batch_size, cfg.sft.batch_size // cfg.learner.num_ranks)
    return replace(cfg.learner, advantage_estimator="grpo", kl_coef=0.0, use_kl_loss=False,
                   actor_lr=cfg.sft.lr, warmup_steps=cfg.sft.warmup_steps, lr_schedule=cfg.sft.lr_schedule,
                   actor_warmup_ratio=None, critic_warmup_ratio=None,
                   mini_batch_size=cfg.sft.batch_size, micro_batch_size=micro)


def build_gold(cfg: Config, model_path: str, rows: list[QARow], search: Any,
               rename: tuple[NamePool, int | str] | None = None, first_only: bool = False) -> list[Any]:
    """Packed gold trajectories of ``rows`` (rows whose episode does not fit are dropped).

    ``rename`` = (pool, seed): every row's entities take names drawn from the pool with
    that seed (``sft.rename_entities``); the packed rows are the renamed ones.
    ``first_only``: each trajectory cut after its first search (``sft.first_search_steps``).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
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
    prompts = []
    for row in shown:
        ids = tokenizer.apply_chat_template(list(row.prompt), add_generation_prompt=True, tokenize=True)
        prompts.append(list(getattr(ids, "input_ids", ids) if not isinstance(ids, dict) else ids["input_ids"]))
    episodes = gold_episodes(rows, prompts, loop, search, renamings)
    if first_only:
        episodes = [first_action(e) for e in episodes]
    rows = shown
    limit = cfg.rollout.max_response_tokens
    kept = [(e, r) for e, r in zip(episodes, rows, strict=True) if len(e.response_ids) <= limit]
    if len(kept) < len(rows):  # a rollout could never produce these: do not teach them
        logger.warning("dropped %d of %d gold trajectories longer than rollout.max_response_tokens=%d",
                       len(rows) - len(kept), len(rows), limit)
    episodes, rows = [e for e, _ in kept], [r for _, r in kept]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = [tokenizer.decode(e.response_ids) for e in episodes]
    return [pack_episodes([e], [r], [r.id], [t], pad, 0) for e, r, t in zip(episodes, rows, texts, strict=True)]


def check_renaming(cfg: Config, rows: list[QARow]) -> None:
    """``sft.rename_entities`` swaps names between entities: only sound in an invented world."""
    if cfg.sft.rename_entities and (other := sorted({r.data_source for r in rows} - {"toyworld"})):
        raise ConfigError("sft.rename_entities", f"is for data=toyworld rows only (invented names); the "
                                                 f"training rows come from {', '.join(other)}")


def name_pool(data_dir: Path, rows: list[QARow]) -> NamePool:
    """The world's names: its paragraphs' titles and the training answers (currencies)."""
    titles = [p.title for p in read_corpus_jsonl(data_dir / "corpus.jsonl")]
    return NamePool([*titles, *(t for row in rows for t in row.ground_truth.target)])


def _renaming(cfg: Config, pool: NamePool | None, epoch: int) -> tuple[NamePool, str] | None:
    return None if pool is None else (pool, f"sft-names/{cfg.seed}/{epoch}")


def _batches(gold: list[Any], cfg: Config, epoch: int) -> list[list[Any]]:
    """Shuffled calls of ``steps_per_call`` optimizer steps each (the tail that does not fill a step is dropped)."""
    import numpy as np

    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(gold))
    per_call = cfg.sft.batch_size * cfg.sft.steps_per_call
    usable = len(order) // cfg.sft.batch_size * cfg.sft.batch_size
    return [[gold[i] for i in order[s:min(s + per_call, usable)]] for s in range(0, usable, per_call)]


def run_sft(cfg: Config, run_dir: Path, retrieval: RetrievalGroup | None = None,
            rollout: RolloutGroup | None = None, *, model_path: str | None = None,
            evaluate: bool = True) -> dict[str, Any]:
    """The whole warm start; returns the summary also written to ``run_dir/summary.json``.

    ``retrieval``/``rollout``: running groups to reuse (left running at the end).
    ``model_path``: the policy to start from (default: ``model`` resolved as usual).
    ``evaluate=False``: no validation rollouts (the caller evaluates the result itself).
    """
    from workers.rollout.worker import concat_trajectories

    cfg, resolved = _prepare_inputs(cfg)
    model_path = model_path or resolved
    init_ray(cfg.cluster, quiet=not cfg.trainer.verbose)
    data_dir = Path(cfg.data.output_dir)
    rows = read_rows(data_dir / f"train.{cfg.data.format}")[: cfg.sft.max_rows]
    val_path = data_dir / f"validation.{cfg.data.format}"
    val_rows = read_rows(val_path)[: cfg.trainer.eval_size] if val_path.exists() and evaluate else []
    check_renaming(cfg, rows)
    shared = [g for g in (retrieval, rollout) if g is not None]
    if retrieval is None:
        retrieval = RetrievalGroup(cfg.retrieval)
        retrieval.wait_ready()
    pool = name_pool(data_dir, rows) if cfg.sft.rename_entities else None
    started = time.perf_counter()
    gold = build_gold(cfg, model_path, rows, retrieval.search, _renaming(cfg, pool, 0))
    steps_per_epoch = len(gold) // cfg.sft.batch_size
    if steps_per_epoch == 0:
        raise ConfigError("sft.batch_size", f"{cfg.sft.batch_size} is more than the {len(gold)} training rows")
    total = cfg.sft.first_search_steps + math.ceil(cfg.sft.epochs * steps_per_epoch)
    learner = LearnerGroup(sft_learner_config(cfg), model_path, seed=cfg.seed, total_steps=total)
    if rollout is None and val_rows:
        rollout = RolloutGroup(cfg.rollout, model_path, retrieval.search, topk=cfg.retrieval.topk,
                               dtype=cfg.model.dtype)
    tracker = MetricsLogger(run_dir, tensorboard=cfg.trainer.tensorboard, run_name=run_dir.name)
    logger.info("SFT: %d gold trajectories, %d optimizer steps (%d on first searches only)",
                len(gold), total, cfg.sft.first_search_steps)
    step, passes, final_eval, checkpoint = 0, 0, {}, None
    full, first = gold, None
    bar = progress_bar(total, desc="SFT")
    try:
        for first_only, stage_end in ((True, cfg.sft.first_search_steps), (False, total)):
            while step < stage_end:
                if first_only and (first is None or pool is not None):  # new names every pass
                    first = build_gold(cfg, model_path, rows, retrieval.search, _renaming(cfg, pool, passes),
                                       first_only=True)
                elif not first_only and passes > 0 and pool is not None:
                    full = build_gold(cfg, model_path, rows, retrieval.search, _renaming(cfg, pool, passes))
                gold = first if first_only and first is not None else full
                for call in _batches(gold, cfg, passes):
                    call = call[: (stage_end - step) * cfg.sft.batch_size]
                    if not call:
                        break
                    batch = concat_trajectories(call)
                    tick = time.perf_counter()
                    metrics = learner.sft_update(ray.put(batch))
                    tokens = int(batch.prompt_lengths.sum() + batch.response_lengths.sum())
                    metrics["sft/tokens_per_s"] = tokens / max(time.perf_counter() - tick, 1e-9)
                    done = len(call) // cfg.sft.batch_size
                    metrics["sft/response_tokens_per_step"] = float(batch.response_lengths.sum()) / done
                    step += done
                    bar.update(done)
                    if (cfg.sft.eval_every and step % cfg.sft.eval_every < done) or step >= total:
                        final_eval = _evaluate(learner, rollout, val_rows, step)
                        metrics.update(final_eval)
                        checkpoint = _save(learner, run_dir, step, model_path)
                    stage = {"sft/first_search_only": float(first_only)}
                    if not first_only:
                        stage["sft/epoch"] = (step - cfg.sft.first_search_steps) / steps_per_epoch
                    tracker.log(step, {**metrics, **stage})
                    bar.set_postfix(loss=f"{metrics.get('sft/loss', float('nan')):.3f}",
                                    tok_s=f"{metrics['sft/tokens_per_s']:.0f}",
                                    val_em=f"{final_eval.get('eval/em', float('nan')):.3f}")
                passes += 1
        bar.close()
    finally:
        tracker.close()
        for group in (learner, rollout, retrieval):
            if group is not None and not any(group is g for g in shared):
                group.shutdown()
    summary = {"run_dir": str(run_dir), "steps": step, "wall_s": time.perf_counter() - started,
               "policy": str(checkpoint / "learner" / "hf") if checkpoint else None, "eval": final_eval}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_plots(run_dir, SFT_PLOT_GROUPS, learning_panel=False)
    return summary


def _evaluate(learner: LearnerGroup, rollout: RolloutGroup | None, rows: list[QARow], step: int) -> dict[str, float]:
    if rollout is None:
        return {}
    rollout.set_weights(learner.export_weights_ref(), step)
    return evaluate_trajectories(ray.get(rollout.rollout(rows, greedy=True, seed=0))).metrics()


def _save(learner: LearnerGroup, run_dir: Path, step: int, model_path: str) -> Path:
    staging = begin_checkpoint(run_dir, step)
    learner.save_checkpoint(str(staging / "learner"))
    return commit_checkpoint(staging, {"step": step, "model_path": model_path, "stage": "sft"})


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> float:
    """Hydra entry point; returns the final validation EM."""
    try:
        cfg = to_config(dcfg)
        summary = run_sft(cfg, Path(HydraConfig.get().runtime.output_dir))
        print(f"SFT done: {summary['steps']} steps in {summary['wall_s']:.0f} s; "
              f"validation {json.dumps(summary['eval'])}")
        print(f"policy: {summary['policy']}\nnext:   python -m launch.train model.path={summary['policy']}")
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    return float(summary["eval"].get("eval/em", 0.0))


if __name__ == "__main__":
    register_configs()
    main()
