"""Deterministic prompt order for training: shuffled epochs with a resumable position.

Runs in the driver. The state (epoch, position) goes into every checkpoint, so a resumed
run continues with exactly the prompts an uninterrupted run would have seen next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.data.rows import QARow


@dataclass
class SamplerState:
    """Where the sampler is: ``position`` prompts into the shuffled order of ``epoch``."""

    epoch: int = 0
    position: int = 0


class PromptSampler:
    """Batches of rows, each epoch a fresh seeded permutation; no prompt is skipped or repeated.

    >>> s = PromptSampler(list("abcde"), seed=0)
    >>> first = s.next_batch(3); rest = s.next_batch(2)
    >>> sorted(first + rest) == list("abcde")
    True
    """

    def __init__(self, rows: Sequence[QARow] | Sequence[str], seed: int) -> None:
        if not rows:
            raise ValueError("no training rows to sample from")
        self.rows = list(rows)
        self.seed = seed
        self.state = SamplerState()

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def next_batch(self, size: int) -> list:
        """The next ``size`` rows, crossing into the next epoch when this one runs out."""
        out: list = []
        while len(out) < size:
            order = self._order(self.state.epoch)
            take = order[self.state.position:self.state.position + size - len(out)]
            out.extend(self.rows[i] for i in take)
            self.state.position += len(take)
            if self.state.position >= len(order):
                self.state = SamplerState(self.state.epoch + 1, 0)
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.state.epoch, "position": self.state.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = SamplerState(int(state["epoch"]), int(state["position"]))
