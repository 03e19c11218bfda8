"""Policy models: the locally built tiny policy and resolving a model config to a directory."""

from workers.policy.resolve import policy_texts, resolve_policy_path
from workers.policy.tiny import build_tiny_policy, ensure_tiny_policy, train_tokenizer

__all__ = ["build_tiny_policy", "ensure_tiny_policy", "policy_texts", "resolve_policy_path",
           "train_tokenizer"]
