"""Int8 dynamic quantization of an encoder's Linear layers, for ``encoder_dtype=int8`` on CPU.

Runs where a ``DenseEncoder`` runs (retrieval actor, HTTP server, index build); imported only
for int8, because it imports torch. Weights are int8 per output channel; each Linear quantizes
its input per tensor at run time and multiplies with fbgemm's int8 kernels (VNNI on x86).

torch quantizes those inputs to 7 bits by default (``reduce_range``), which keeps CPUs without
VNNI from overflowing their 16-bit intermediate sums. VNNI accumulates in 32 bits, so there
the full 8 bits are used: on MiniLM, cosine to the fp32 embedding of MuSiQue queries rises
from 0.944 (min) / 0.975 (mean) to 0.985 / 0.993, and recall@1 from 0.764 to 0.781-0.785
(fp32: 0.785; docs/retrieval.md). Per-token input scales would be closer still but need a fused
kernel torch lacks: unfused, the rescaling costs more than the int8 matmul saves.

``torch.ao.quantization`` is deprecated in favour of torchao, which is not a dependency here:
its warnings are silenced.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

logger = logging.getLogger(__name__)


def has_vnni() -> bool:
    """Whether this CPU has AVX512-VNNI or AVX-VNNI (int8 dot products into int32)."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)  # private, hence the fallback
    return bool(probe()) if probe is not None else False


class FullRangeLinear(DynamicLinear):
    """A dynamically quantized Linear whose inputs use all 8 bits (``reduce_range=False``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params,
                                                  reduce_range=False).to(x.dtype)


def quantize_int8(model: Any, full_range: bool | None = None) -> Any:
    """``model`` with every ``nn.Linear`` dynamically quantized to int8; ``full_range`` None
    means 8-bit inputs where the CPU has VNNI, 7-bit ones elsewhere."""
    if full_range is None:
        full_range = has_vnni()
    if not full_range:
        logger.warning("int8 encoder with 7-bit activations (no VNNI on this CPU): expect lower recall")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                mapping={torch.nn.Linear: FullRangeLinear if full_range else DynamicLinear})
