"""A tiny Qwen2 checkpoint and random rollout batches for the learner tests (unit and integration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workers.types import GroundTruth, RewardBatch, TrajectoryBatch

VOCAB = 512


def make_tiny_model(directory: Path, seed: int = 0) -> str:
    """A 2-layer Qwen2 with seeded random weights saved with save_pretrained."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=256,
                         head_dim=64, max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(str(directory))
    return str(directory)


def make_batch(B: int = 8, P: int = 6, T: int = 20, seed: int = 0
               ) -> tuple[TrajectoryBatch, RewardBatch]:
    """Episodes of action / observation / action segments with both paddings."""
    rng = np.random.default_rng(seed)
    prompt_lengths = rng.integers(2, P + 1, size=B)
    response_lengths = rng.integers(T - 6, T + 1, size=B)
    prompt_ids = np.zeros((B, P), np.int32)
    response_ids = np.zeros((B, T), np.int32)
    action_mask = np.zeros((B, T), np.int8)
    rewards = np.zeros((B, T), np.float32)
    for b in range(B):
        prompt_ids[b, P - prompt_lengths[b]:] = rng.integers(1, VOCAB, prompt_lengths[b])
        n = response_lengths[b]
        response_ids[b, :n] = rng.integers(1, VOCAB, n)
        action_mask[b, :4] = 1  # <search> ... </search>
        action_mask[b, 9:n] = 1  # after an observation of 5 tokens: the answer
        rewards[b, 3] = rng.normal() * 0.3  # step reward on </search>
        rewards[b, n - 1] = rng.normal()  # outcome on the last action token
    traj = TrajectoryBatch(
        prompt_ids=prompt_ids, prompt_lengths=prompt_lengths, response_ids=response_ids,
        response_lengths=response_lengths, action_mask=action_mask,
        rollout_logprobs=np.zeros((B, T), np.float32), turns=((),) * B,
        response_text=("",) * B, sample_ids=tuple(str(i) for i in range(B)),
        ground_truth=(GroundTruth(target=("x",)),) * B, data_sources=("test",) * B,
        policy_version=0)
    zeros = np.zeros(B, np.float32)
    reward = RewardBatch(token_rewards=rewards, format_ok=zeros, answer_f1=zeros,
                         exact_match=zeros, key_score=zeros, outcome=zeros, num_searches=zeros)
    return traj, reward
