"""RolloutWorker: one generation engine plus the agent loop, producing ``TrajectoryBatch``es.

Runs inside a ``RolloutActor`` (actors/rollout.py) or in the driver when
``rollout.num_workers=0``. Ray-free: the retriever is any ``search(queries, topk)``
callable, which the actor wires to the retrieval service.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from workers.config import RolloutConfig
from workers.data.prompt import encode_chat_prompt
from workers.data.rows import QARow
from workers.rollout.agent_loop import AgentLoop, Episode, LoopSettings, SearchFn
from workers.rollout.engines import SamplingSettings, make_engine
from workers.types import TrajectoryBatch

logger = logging.getLogger(__name__)

ROLLOUT_TOKENS_PER_S = "rollout/tokens_per_s"
ROLLOUT_SEARCHES = "rollout/searches"
ROLLOUT_SEARCH_WAIT_FRACTION = "rollout/search_wait_fraction"


def pack_episodes(episodes: Sequence[Episode], rows: Sequence[QARow], sample_ids: Sequence[str],
                  texts: Sequence[str], pad_id: int, policy_version: int) -> TrajectoryBatch:
    """Columnar numpy batch: prompts left-padded, responses right-padded."""
    b = len(episodes)
    p = max(len(e.prompt_ids) for e in episodes)
    t = max(1, max(len(e.response_ids) for e in episodes))
    prompt_ids = np.full((b, p), pad_id, dtype=np.int32)
    response_ids = np.full((b, t), pad_id, dtype=np.int32)
    action_mask = np.zeros((b, t), dtype=np.int8)
    logprobs = np.zeros((b, t), dtype=np.float32)
    for i, e in enumerate(episodes):
        prompt_ids[i, p - len(e.prompt_ids):] = e.prompt_ids
        n = len(e.response_ids)
        response_ids[i, :n] = e.response_ids
        action_mask[i, :n] = e.action_mask
        logprobs[i, :n] = e.logprobs
    return TrajectoryBatch(
        prompt_ids=prompt_ids, prompt_lengths=np.array([len(e.prompt_ids) for e in episodes], np.int32),
        response_ids=response_ids, response_lengths=np.array([len(e.response_ids) for e in episodes], np.int32),
        action_mask=action_mask, rollout_logprobs=logprobs,
        turns=tuple(tuple(e.turns) for e in episodes), response_text=tuple(texts),
        sample_ids=tuple(sample_ids), ground_truth=tuple(r.ground_truth for r in rows),
        data_sources=tuple(r.data_source for r in rows), policy_version=policy_version, pad_id=pad_id)


def concat_trajectories(batches: Sequence[TrajectoryBatch]) -> TrajectoryBatch:
    """One batch from several (re-padded); all must share ``pad_id`` and ``policy_version``."""
    if not batches:
        raise ValueError("no trajectory batches to concatenate")
    first = batches[0]
    if any(b.pad_id != first.pad_id or b.policy_version != first.policy_version for b in batches):
        raise ValueError("trajectory batches differ in pad_id or policy_version")
    p = max(b.prompt_ids.shape[1] for b in batches)
    t = max(b.response_ids.shape[1] for b in batches)

    def pad(arrays: list[np.ndarray], width: int, left: bool, fill: float) -> np.ndarray:
        out = []
        for a in arrays:
            extra = np.full((a.shape[0], width - a.shape[1]), fill, dtype=a.dtype)
            out.append(np.concatenate([extra, a] if left else [a, extra], axis=1))
        return np.concatenate(out)

    return TrajectoryBatch(
        prompt_ids=pad([b.prompt_ids for b in batches], p, True, first.pad_id),
        prompt_lengths=np.concatenate([b.prompt_lengths for b in batches]),
        response_ids=pad([b.response_ids for b in batches], t, False, first.pad_id),
        response_lengths=np.concatenate([b.response_lengths for b in batches]),
        action_mask=pad([b.action_mask for b in batches], t, False, 0),
        rollout_logprobs=pad([b.rollout_logprobs for b in batches], t, False, 0.0),
        turns=tuple(x for b in batches for x in b.turns),
        response_text=tuple(x for b in batches for x in b.response_text),
        sample_ids=tuple(x for b in batches for x in b.sample_ids),
        ground_truth=tuple(x for b in batches for x in b.ground_truth),
        data_sources=tuple(x for b in batches for x in b.data_sources),
        policy_version=first.policy_version, pad_id=first.pad_id)


class RolloutWorker:
    """Owns one engine; turns dataset rows into trajectories."""

    def __init__(self, cfg: RolloutConfig, model_path: str, search: SearchFn, *, topk: int = 3,
                 dtype: str = "auto", trust_remote_code: bool = False) -> None:
        self.cfg = cfg
        max_len = cfg.max_prompt_tokens + cfg.max_response_tokens
        self.engine = make_engine(cfg.engine, model_path, dtype=dtype, seed=cfg.seed,
                                  gpu_memory_utilization=cfg.gpu_memory_utilization,
                                  kv_cache_gib=cfg.kv_cache_gib, tensor_parallel_size=cfg.tensor_parallel_size,
                                  max_model_len=max_len, trust_remote_code=trust_remote_code,
                                  sleep_level=cfg.sleep_level)
        self.tokenizer: Any = self.engine.tokenizer  # type: ignore[attr-defined]
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                          else self.tokenizer.eos_token_id)
        self.search_seconds = 0.0
        self._search = search
        self.loop = AgentLoop(self.engine, self.tokenizer, self._timed(search),
                              LoopSettings.from_config(cfg, topk))
        self.policy_version = 0
        self._receive_s = 0.0
        self.last_metrics: dict[str, float] = {}

    def _timed(self, search: SearchFn) -> SearchFn:
        def timed(queries: list[str], topk: int) -> list[list[Any]]:
            started = time.perf_counter()
            try:
                return search(queries, topk)
            finally:
                self.search_seconds += time.perf_counter() - started
        return timed

    def check_retrieval(self, query: str = "retrieval check") -> float:
        """One search through this worker's own retrieval route (the same one its episodes
        use); seconds it took. Raises when retrieval cannot be reached from here."""
        started = time.perf_counter()
        results = self._search([query], 1)
        if len(results) != 1:
            raise RuntimeError(f"retrieval answered {len(results)} result lists for 1 query")
        return time.perf_counter() - started

    def encode_prompt(self, row: QARow) -> list[int]:
        """Chat-template the row's prompt; refuse prompts over ``max_prompt_tokens``."""
        ids = encode_chat_prompt(self.tokenizer, row.prompt)
        if len(ids) > self.cfg.max_prompt_tokens:
            raise ValueError(f"sample {row.id}: prompt has {len(ids)} tokens, more than "
                             f"rollout.max_prompt_tokens={self.cfg.max_prompt_tokens}")
        return ids

    def rollout(self, rows: Sequence[QARow], *, greedy: bool = False, seed: int | None = None,
                n_samples: int | None = None) -> TrajectoryBatch:
        """Sample ``n_samples`` episodes per row (greedy: one, temperature 0)."""
        self.wake_up()
        n = 1 if greedy else (n_samples or self.cfg.n_samples)
        expanded = [row for row in rows for _ in range(n)]
        sample_ids = [f"{row.id}#{k}" for row in rows for k in range(n)]
        prompts = [self.encode_prompt(row) for row in expanded]
        sampling = SamplingSettings(max_tokens=self.cfg.max_action_tokens,
                                    temperature=0.0 if greedy else self.cfg.temperature,
                                    top_p=1.0 if greedy else self.cfg.top_p,
                                    seed=self.cfg.seed if seed is None else seed)
        self.search_seconds = 0.0
        started = time.perf_counter()
        episodes = self.loop.run(prompts, sampling)
        elapsed = time.perf_counter() - started
        texts = [str(self.tokenizer.decode(e.response_ids)) for e in episodes]
        generated = sum(sum(e.action_mask) for e in episodes)
        self.last_metrics = {
            ROLLOUT_TOKENS_PER_S: generated / max(elapsed, 1e-9),
            ROLLOUT_SEARCHES: float(sum(e.searches for e in episodes)),
            ROLLOUT_SEARCH_WAIT_FRACTION: self.search_seconds / max(elapsed, 1e-9),
        }
        return pack_episodes(episodes, expanded, sample_ids, texts, self.pad_id, self.policy_version)

    def sleep(self) -> None:
        """The engine frees its GPU memory for the learner phase (vLLM sleep mode, GPU only;
        a no-op on CPU and for engines without it)."""
        sleep = getattr(self.engine, "sleep", None)
        if sleep is not None:
            sleep()

    def wake_up(self) -> None:
        """The engine takes its GPU memory back (no-op when awake or without sleep mode)."""
        wake_up = getattr(self.engine, "wake_up", None)
        if wake_up is not None:
            wake_up()

    def update_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]], version: int) -> int:
        """Load new policy weights in place and adopt ``version``; returns it."""
        self.wake_up()
        items = weights.items() if isinstance(weights, Mapping) else weights
        self.engine.update_weights(items)
        self.policy_version = version
        return version

    def weight_workers(self) -> int:
        """Weight-group ranks this worker's engine needs (0: the engine cannot receive a broadcast)."""
        return int(getattr(self.engine, "num_weight_workers", 0))

    def join_weight_group(self, rank_offset: int, world_size: int, host: str, port: int,
                          store_path: str | None, timeout_s: float) -> list[int]:
        """The engine's workers join a new weight-update group."""
        join = getattr(self.engine, "join_weight_group", None)
        if join is None:
            raise RuntimeError(f"the {self.cfg.engine} engine cannot join a weight broadcast; "
                               "use rollout.weight_sync=object_store")
        return list(join(rank_offset, world_size, host, port, store_path, timeout_s))

    def receive_weights(self, manifest: Any, version: int, timeout_s: float) -> int:
        """Load one weight broadcast and adopt ``version`` (only when all of it arrived)."""
        started = time.perf_counter()
        self.wake_up()
        try:
            received = int(self.engine.receive_weights(manifest, timeout_s))  # type: ignore[attr-defined]
        except BaseException:
            self.policy_version = -1  # partly loaded: no version until a sync completes
            raise
        self._receive_s = time.perf_counter() - started
        self.policy_version = version
        return received

    def weight_sync_seconds(self) -> dict[str, float]:
        """Seconds per phase of the last broadcast receive: the actor's whole call (``total``,
        with the RPC into the engine and the prefix-cache reset) and the engine's first worker."""
        seconds: list[dict[str, float]] = getattr(self.engine, "weight_sync_seconds", list)()
        return {"total": self._receive_s, **(seconds[0] if seconds else {})}

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """The engine's log-probs of fixed token sequences (checks weight sync)."""
        return self.engine.score(sequences)

    def close(self) -> None:
        """Stop the engine's own processes (vLLM) now rather than at interpreter exit."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    def metrics(self) -> dict[str, float]:
        """Metrics of the last rollout call."""
        return dict(self.last_metrics)
