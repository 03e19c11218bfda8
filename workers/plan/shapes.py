"""What a plan is computed from: the cluster's nodes and the model's architecture.

Runs in the driver or a command-line tool (``launch.plan``); no Ray, no CUDA, no model
download: architectures come from the tiny config, a local ``config.json`` or a table of
the published Qwen2.5 configs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from workers.config import ConfigError, ModelConfig

GIB = float(2**30)
"""Bytes in a GiB; every memory figure of a plan is in GiB."""


@dataclass(frozen=True)
class NodeShape:
    """One node's schedulable resources (Ray's totals, not free amounts)."""

    gpus: float
    """GPUs Ray schedules on this node."""
    cpus: float
    """CPU slots Ray schedules on this node."""
    node_id: str = ""
    """Ray's node id when the shape comes from ``ray.nodes()`` (maps a plan's node index to a node)."""


@dataclass(frozen=True)
class ClusterShape:
    """The nodes a job may use and the memory of one GPU."""

    nodes: tuple[NodeShape, ...]
    """Nodes in the order the plan fills them."""
    gpu_memory_gib: Optional[float] = None
    """Memory of each GPU; None skips the memory check (resources only)."""

    @classmethod
    def uniform(cls, nodes: int, gpus_per_node: float, cpus_per_node: float,
                gpu_memory_gib: Optional[float]) -> ClusterShape:
        """``nodes`` identical nodes (the ``plan.*`` arguments of ``launch.plan``)."""
        return cls(tuple(NodeShape(gpus_per_node, cpus_per_node) for _ in range(nodes)), gpu_memory_gib)

    @classmethod
    def from_ray_nodes(cls, ray_nodes: Sequence[Mapping[str, Any]],
                       gpu_memory_gib: Optional[float] = None) -> ClusterShape:
        """From ``ray.nodes()``: the alive nodes, GPU nodes first (the placement fills them first)."""
        shapes = []
        for node in ray_nodes:
            if node.get("Alive", True):
                res = node.get("Resources", {})
                shapes.append(NodeShape(float(res.get("GPU", 0.0)), float(res.get("CPU", 0.0)),
                                        str(node.get("NodeID", ""))))
        shapes.sort(key=lambda n: -n.gpus)
        return cls(tuple(shapes), gpu_memory_gib)

    @property
    def gpus(self) -> float:
        """GPUs over all nodes."""
        return sum(n.gpus for n in self.nodes)


@dataclass(frozen=True)
class ModelShape:
    """A decoder's sizes, enough to count parameters, activations and KV cache."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def embedding_params(self) -> int:
        """Token embedding (V x h)."""
        return self.vocab_size * self.hidden_size

    @property
    def layer_params(self) -> int:
        """One decoder layer: q/k/v (with biases, Qwen2), o, gated MLP, two RMSNorms."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attention = (h * h + h) + 2 * (h * kv + kv) + h * h
        return attention + 3 * h * self.intermediate_size + 2 * h

    @property
    def params(self) -> int:
        """The policy: embedding, layers, final norm and (untied) LM head."""
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.embedding_params + self.num_layers * self.layer_params + self.hidden_size + head

    @property
    def critic_params(self) -> int:
        """The critic: the policy's trunk with a scalar value head instead of the LM head."""
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.params - head + self.hidden_size + 1


QWEN2_5 = {
    # Published config.json values of the Qwen2.5 base models (and their instruct variants).
    "qwen2.5-3b": ModelShape(151936, 2048, 36, 16, 2, 11008, tied_embeddings=True),
    "qwen2.5-7b": ModelShape(152064, 3584, 28, 28, 4, 18944, tied_embeddings=False),
}


def _from_config_json(path: Path) -> ModelShape:
    raw = json.loads(path.read_text())
    try:
        return ModelShape(raw["vocab_size"], raw["hidden_size"], raw["num_hidden_layers"],
                          raw["num_attention_heads"], raw.get("num_key_value_heads", raw["num_attention_heads"]),
                          raw["intermediate_size"], bool(raw.get("tie_word_embeddings", False)))
    except KeyError as exc:
        raise ConfigError("model.path", f"{path} has no {exc.args[0]!r}: not a decoder config the plan knows") from exc


def model_shape(cfg: ModelConfig) -> ModelShape:
    """The policy's architecture: the tiny config, ``model.path``/config.json, or a known hub name."""
    if cfg.path is None:
        t = cfg.tiny
        return ModelShape(t.vocab_size, t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads,
                          t.intermediate_size, tied_embeddings=True)
    local = Path(cfg.path) / "config.json"
    if local.is_file():
        return _from_config_json(local)
    key = cfg.path.rstrip("/").split("/")[-1].lower().removesuffix("-instruct")
    if key in QWEN2_5:
        return QWEN2_5[key]
    raise ConfigError("model.path", f"{cfg.path!r}: no config.json there and not a known hub name "
                      f"({', '.join(sorted(QWEN2_5))}); point model.path at a local model directory")
