"""Policy, critic and reference models from one Hugging Face path, and their forward passes.

Runs inside the learner ranks (CPU or GPU). The critic is the policy's architecture with
its LM head replaced by a scalar value head, initialised from the same weights
(StepSearch trains the critic from the policy checkpoint). Sequences are
``concat(prompt_ids, response_ids)``: prompts left-padded, responses right-padded, so the
attention mask drops both paddings and position ids count real tokens only. Response
token t is predicted from the position just before it, ``P - 1 + t``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from workers.learner.ppo import entropy_from_logits

logger = logging.getLogger(__name__)


class ModelInputs(NamedTuple):
    """One micro-batch as model input; ``prompt_len`` is P, the padded prompt width."""

    input_ids: Tensor  # (B, P + T)
    attention_mask: Tensor  # (B, P + T)
    position_ids: Tensor  # (B, P + T)
    prompt_len: int


def make_inputs(prompt_ids: np.ndarray, prompt_lengths: np.ndarray, response_ids: np.ndarray,
                response_lengths: np.ndarray, device: torch.device | str = "cpu") -> ModelInputs:
    """Build the model input of ``concat(prompt, response)`` skipping both paddings."""
    P = prompt_ids.shape[1]
    T = response_ids.shape[1]
    prompt_valid = np.arange(P)[None, :] >= (P - prompt_lengths[:, None])  # (B, P) left pad
    response_valid = np.arange(T)[None, :] < response_lengths[:, None]  # (B, T) right pad
    ids = np.concatenate([prompt_ids, response_ids], axis=1).astype(np.int64)
    mask = np.concatenate([prompt_valid, response_valid], axis=1).astype(np.int64)
    ids = np.where(mask == 1, ids, 0)  # any pad id is fine under the mask; 0 is always in range
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    ids_t, mask_t, pos_t = (torch.from_numpy(np.ascontiguousarray(a)).to(device)
                            for a in (ids, mask, positions))
    return ModelInputs(ids_t, mask_t, pos_t, P)


class CriticModel(nn.Module):
    """The policy's decoder with a scalar value head on every position's last hidden state."""

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        # Zero init: the first values are 0 on every rank, whatever the seed.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state  # (B, L, H)
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)  # (B, L)


def load_causal_lm(path: str, dtype: torch.dtype, gradient_checkpointing: bool = False,
                   trust_remote_code: bool = False) -> Any:
    """The policy (or reference) as ``AutoModelForCausalLM``, keeping Hugging Face names."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                 trust_remote_code=trust_remote_code)
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_critic(path: str, dtype: torch.dtype, gradient_checkpointing: bool = False,
                trust_remote_code: bool = False) -> CriticModel:
    """The critic: the policy checkpoint's decoder (LM head dropped) plus a value head."""
    lm = load_causal_lm(path, dtype, gradient_checkpointing, trust_remote_code)
    backbone = lm.get_decoder()
    critic = CriticModel(backbone, lm.config.hidden_size)
    return critic.to(dtype)


def load_reference(path: str, dtype: torch.dtype, trust_remote_code: bool = False) -> Any:
    """The frozen reference policy: eval mode, no gradients."""
    ref = load_causal_lm(path, dtype, trust_remote_code=trust_remote_code)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def response_logits(model: Callable[..., Any], inputs: ModelInputs, response_len: int) -> Tensor:
    """Logits predicting each response token: positions ``P-1 .. P+T-2``.  # (B, T, V)"""
    P = inputs.prompt_len
    # Only positions P-1 onwards are projected to the vocabulary: with a 5k-token vocabulary
    # the LM head is over a third of a tiny policy's FLOPs per token, and prompts are most tokens.
    keep = inputs.input_ids.shape[1] - (P - 1)
    out = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids, use_cache=False, logits_to_keep=keep)
    return out.logits[:, :response_len].float()


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """log pi(token) under the logits.  (B, T, V), (B, T) -> (B, T)"""
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def policy_forward(model: Callable[..., Any], inputs: ModelInputs, response_ids: Tensor,
                   with_entropy: bool = False, temperature: float = 1.0) -> tuple[Tensor, Tensor | None]:
    """(logprobs, entropy) of the response tokens, both (B, T); entropy None unless asked.

    ``temperature``: score the distribution the tokens were sampled from, softmax(logits / T);
    0 (greedy sampling) scores the plain logits.
    """
    logits = response_logits(model, inputs, response_ids.shape[1])  # (B, T, V)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logprobs = logprobs_from_logits(logits, response_ids)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logprobs, entropy


def critic_forward(critic: Callable[..., Any], inputs: ModelInputs, response_len: int) -> Tensor:
    """V of the state before each response token (same alignment as the logits).  # (B, T)"""
    values = critic(inputs.input_ids, inputs.attention_mask, inputs.position_ids)  # (B, L)
    P = inputs.prompt_len
    return values[:, P - 1:P - 1 + response_len].float()
