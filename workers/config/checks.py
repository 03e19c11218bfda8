"""``validate``: the one place that checks configuration values, failing fast with the
field's dotted name."""

from __future__ import annotations

from typing import Any

from workers.config.schema import Config, ConfigError

_CHOICES: dict[str, tuple[Any, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "data.converter": (None, "toyworld", "musique", "hotpotqa", "2wiki", "flashrag"),
    "data.split": (None, "train", "validation", "test"),
    "data.format": ("parquet", "jsonl"),
    "data.instruction": ("search", "short"),
    "retrieval.method": ("dense", "bm25"),
    "retrieval.pooling": ("mean", "cls"),
    "retrieval.encoder_dtype": ("auto", "float32", "bfloat16", "float16", "int8"),
    "retrieval.index_type": ("flat", "hnsw", "ivfpq"),
    "rollout.engine": ("vllm", "hf"),
    "rollout.weight_sync": ("broadcast", "object_store"),
    "reward.answer_metric": ("f1", "em"),
    "learner.zero_stage": (0, 1, 2, 3),
    "learner.lr_schedule": ("constant", "cosine"),
    "sft.lr_schedule": ("constant", "cosine"),
    "learner.advantage_estimator": ("gae", "grpo"),
    "reward.info_gain_idf": ("pair", "corpus"),
    "learner.engine": ("deepspeed", "torch"),
    "learner.precision": ("auto", "fp32", "bf16"),
    "model.warm_start": ("none", "sft"),
    "cluster.placement": ("colocated", "separate"),
    "retrieval.replicas": ("fixed", "per_node"),
    "retrieval.backend": ("actor", "http"),
    "rollout.sleep_level": (0, 1, 2),
    "learner.off_policy_correction": ("none", "tis", "decoupled"),
}


FLASHRAG_SETS = ("bamboogle", "nq", "triviaqa", "popqa")
"""FlashRAG sets whose ``data.name`` alone picks the flashrag converter."""


def data_converter(name: str, converter: str | None) -> str:
    """The converter for a dataset: ``converter`` when given, else the one ``name`` implies.

    >>> data_converter("2wiki", None), data_converter("nq", None), data_converter("popqa2", "flashrag")
    ('2wiki', 'flashrag', 'flashrag')
    """
    if converter:
        return converter
    if name in ("toyworld", "musique", "hotpotqa", "2wiki"):
        return name
    if name in FLASHRAG_SETS:
        return "flashrag"
    raise ConfigError("data.name", f"unknown dataset {name!r}: use toyworld, musique, hotpotqa, 2wiki, "
                      f"{', '.join(FLASHRAG_SETS)}, or data=flashrag data.name={name} for a FlashRAG JSONL file")


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _require(ok: bool, field_name: str, reason: str) -> None:
    if not ok:
        raise ConfigError(field_name, reason)


def _positive(cfg: Config, *names: str) -> None:
    for name in names:
        value = _get(cfg, name)
        _require(value > 0, name, f"must be > 0, got {value!r}")


def _non_negative(cfg: Config, *names: str) -> None:
    for name in names:
        value = _get(cfg, name)
        _require(value >= 0, name, f"must be >= 0, got {value!r}")


def _validate_model(cfg: Config) -> None:
    tiny = cfg.model.tiny
    _positive(cfg, "model.tiny.hidden_size", "model.tiny.num_layers", "model.tiny.num_heads")
    _require(tiny.hidden_size % tiny.num_heads == 0, "model.tiny.num_heads",
             f"must divide hidden_size {tiny.hidden_size}")
    head_dim = tiny.hidden_size // tiny.num_heads
    _require(head_dim == 64, "model.tiny.num_heads",
             f"hidden_size / num_heads = {head_dim}; vLLM's CPU attention needs head_dim 64")
    _require(tiny.num_heads % tiny.num_kv_heads == 0, "model.tiny.num_kv_heads",
             f"must divide num_heads {tiny.num_heads}")
    _require(tiny.vocab_size >= 300, "model.tiny.vocab_size",
             f"must be >= 300 (256 byte tokens + specials + merges), got {tiny.vocab_size}")


def _validate_data(cfg: Config) -> None:
    data = cfg.data  # data.input_path is checked by launch.prepare_data, the one tool that reads it
    _require(bool(data.name) and "/" not in data.name and not data.name.startswith("."), "data.name",
             f"must be a dataset name (it names the rows' data_source), got {data.name!r}")
    _require(data.converter != "flashrag" or data.name != "toyworld", "data.name",
             "data=flashrag needs the set's name (data.name=popqa, ...): it becomes the rows' data_source")
    for name in ("data.val_fraction", "data.test_fraction",
                 "data.toyworld.val_fraction", "data.toyworld.test_fraction"):
        value = _get(cfg, name)
        _require(0.0 <= value < 0.5, name, f"must be in [0, 0.5), got {value!r}")
    _require(data.max_rows is None or data.max_rows > 0, "data.max_rows",
             f"must be > 0 or null, got {data.max_rows!r}")
    world = data.toyworld
    _require(bool(world.hops) and all(h in (2, 3, 4) for h in world.hops), "data.toyworld.hops",
             f"must be a non-empty list of 2, 3 or 4, got {list(world.hops)!r}")
    _positive(cfg, "data.toyworld.num_countries", "data.toyworld.num_cities",
              "data.toyworld.num_universities", "data.toyworld.num_companies",
              "data.toyworld.num_people", "data.toyworld.num_films", "data.toyworld.num_questions")
    _require(0.0 <= world.lookalike_fraction <= 1.0, "data.toyworld.lookalike_fraction",
             f"must be in [0, 1], got {world.lookalike_fraction!r}")


def _validate_runtime(cfg: Config) -> None:
    _positive(cfg, "retrieval.topk", "retrieval.encode_batch_size", "retrieval.max_batch_size",
              "retrieval.num_replicas", "retrieval.max_length")
    _non_negative(cfg, "retrieval.cache_size", "retrieval.max_batch_wait_ms",
                  "rollout.num_workers", "reward.num_workers")
    _require(0 < cfg.server.port < 65536, "server.port", f"must be 1-65535, got {cfg.server.port}")
    _positive(cfg, "server.max_topk", "server.max_queries", "server.max_query_chars")
    _non_negative(cfg, "server.max_pending", "retrieval.cache_max_bytes")
    tokens = [name for name in ("auth_token", "auth_token_env", "auth_token_file") if getattr(cfg.server, name)]
    if len(tokens) > 1:
        raise ConfigError(f"server.{tokens[-1]}", "set only one of server.auth_token, server.auth_token_env "
                          f"and server.auth_token_file (got {', '.join(tokens)})")
    _positive(cfg, "rollout.max_prompt_tokens", "rollout.max_response_tokens",
              "rollout.max_obs_tokens", "rollout.max_action_tokens", "rollout.n_samples",
              "rollout.tensor_parallel_size", "rollout.kv_cache_gib", "rollout.weight_sync_timeout_s")
    _non_negative(cfg, "rollout.max_turns", "rollout.temperature")
    _require(0.0 < cfg.rollout.top_p <= 1.0, "rollout.top_p", f"must be in (0, 1], got {cfg.rollout.top_p}")
    _require(0.0 < cfg.rollout.gpu_memory_utilization <= 1.0, "rollout.gpu_memory_utilization",
             f"must be in (0, 1], got {cfg.rollout.gpu_memory_utilization}")
    _validate_placement(cfg)


def _validate_placement(cfg: Config) -> None:
    retrieval = cfg.retrieval
    if retrieval.backend == "http":
        url = retrieval.url or ""
        _require(url.startswith(("http://", "https://")), "retrieval.url",
                 f"retrieval.backend=http needs an http(s) endpoint such as "
                 f"http://127.0.0.1:8000/retrieve, got {url!r}")
    _positive(cfg, "retrieval.http_timeout_s")
    _non_negative(cfg, "retrieval.http_retries")
    _require(cfg.rollout.sleep_level == 0 or cfg.cluster.placement == "colocated", "rollout.sleep_level",
             "engines sleep only to share their GPUs: set cluster.placement=colocated or rollout.sleep_level=0")
    _require(cfg.rollout.sleep_level == 0 or not cfg.trainer.async_rollout, "rollout.sleep_level",
             "trainer.async_rollout keeps the engines generating while the learner updates, so they cannot "
             "sleep: set rollout.sleep_level=0 or trainer.async_rollout=false")


def _validate_learner(cfg: Config) -> None:
    learner = cfg.learner
    _positive(cfg, "learner.num_ranks", "learner.sync_bucket_mb", "learner.mini_batch_size", "learner.micro_batch_size",
              "learner.ppo_epochs", "learner.actor_lr", "learner.critic_lr", "learner.clip_ratio",
              "learner.value_clip", "learner.grad_clip")
    _non_negative(cfg, "learner.entropy_coef", "learner.kl_coef", "learner.warmup_steps")
    for name in ("learner.gamma", "learner.lam"):
        value = _get(cfg, name)
        _require(0.0 <= value <= 1.0, name, f"must be in [0, 1], got {value}")
    _require(learner.dual_clip is None or learner.dual_clip > 1.0, "learner.dual_clip",
             f"must be > 1 or null, got {learner.dual_clip}")
    for name in ("learner.actor_warmup_ratio", "learner.critic_warmup_ratio"):
        ratio = _get(cfg, name)
        _require(ratio is None or 0.0 <= ratio < 1.0, name, f"must be in [0, 1) or null, got {ratio}")
    _require(learner.logprob_micro_batch_size is None or learner.logprob_micro_batch_size > 0,
             "learner.logprob_micro_batch_size", f"must be > 0 or null, got {learner.logprob_micro_batch_size}")
    per_rank, rem = divmod(learner.mini_batch_size, learner.num_ranks)
    _require(rem == 0, "learner.mini_batch_size",
             f"{learner.mini_batch_size} does not split over learner.num_ranks={learner.num_ranks}")
    _require(per_rank % learner.micro_batch_size == 0, "learner.micro_batch_size",
             f"{learner.micro_batch_size} does not divide the per-rank mini-batch {per_rank}")
    _require(not (learner.precision == "bf16" and learner.engine == "torch"), "learner.precision",
             "bf16 needs learner.engine=deepspeed (the torch engine trains fp32 weights)")
    if learner.advantage_estimator == "grpo":
        _require(cfg.rollout.n_samples > 1, "rollout.n_samples",
                 "grpo advantages need groups: set rollout.n_samples > 1")
    samples = cfg.trainer.batch_size * cfg.rollout.n_samples
    _require(samples % learner.mini_batch_size == 0, "learner.mini_batch_size",
             f"{learner.mini_batch_size} does not divide trainer.batch_size x rollout.n_samples = {samples}")


def _validate_async(cfg: Config) -> None:
    """Issue 23: the staleness bound and the importance-weight cap."""
    _positive(cfg, "trainer.max_staleness")
    _require(cfg.learner.is_cap >= 1.0, "learner.is_cap", f"must be >= 1 (a weight of 1 is on-policy), "
             f"got {cfg.learner.is_cap}")


def _validate_sft_batches(cfg: Config) -> None:
    """``sft.micro_batch_size`` caps a rank's pass; a rank's share of the batch may be smaller."""
    per_rank, rem = divmod(cfg.sft.batch_size, cfg.learner.num_ranks)
    _require(rem == 0 and per_rank > 0, "sft.batch_size",
             f"{cfg.sft.batch_size} does not split over learner.num_ranks={cfg.learner.num_ranks}")
    micro = min(cfg.sft.micro_batch_size, per_rank)
    _require(per_rank % micro == 0, "sft.micro_batch_size",
             f"{cfg.sft.micro_batch_size} does not divide a rank's share {per_rank} of sft.batch_size "
             f"{cfg.sft.batch_size} (learner.num_ranks={cfg.learner.num_ranks})")


def validate(cfg: Config) -> Config:
    """Check every field and return ``cfg``; raise ``ConfigError`` naming the first bad one."""
    for name, allowed in _CHOICES.items():
        value = _get(cfg, name)
        _require(value in allowed, name, f"must be one of {list(allowed)}, got {value!r}")
    _validate_model(cfg)
    _validate_data(cfg)
    _validate_runtime(cfg)
    _positive(cfg, "trainer.total_steps", "trainer.batch_size", "trainer.eval_size", "retrieval.search_timeout_s",
              "trainer.reward_timeout_s",
              "rollout.timeout_s", "rollout.restart_window_s", "learner.timeout_s",
              "learner.max_nonfinite_updates")
    _non_negative(cfg, "trainer.eval_every", "trainer.save_every", "trainer.keep_checkpoints",
                  "trainer.critic_warmup_steps", "rollout.max_restarts")
    _require(cfg.trainer.critic_warmup_steps == 0 or cfg.learner.advantage_estimator == "gae",
             "trainer.critic_warmup_steps",
             f"needs a critic, but learner.advantage_estimator={cfg.learner.advantage_estimator} has none")
    _validate_learner(cfg)
    _validate_async(cfg)
    if cfg.learner.num_threads is not None:
        _positive(cfg, "learner.num_threads")
    _positive(cfg, "sft.epochs", "sft.lr", "sft.batch_size", "sft.micro_batch_size", "sft.steps_per_call")
    _non_negative(cfg, "sft.warmup_steps", "sft.eval_every", "sft.first_search_steps")
    _require(0.0 <= cfg.sft.early_answer_share <= 1.0, "sft.early_answer_share",
             f"{cfg.sft.early_answer_share} is not a share between 0 and 1")
    _validate_sft_batches(cfg)
    return cfg
