"""Derived random seeds (one home for the ``seed * 1_000_003`` mixing).

Ray-free; runs in the driver (rollout seeds per step) and in the learner ranks (mini-batch
orders). Multiplying the run's seed by a prime larger than any step count keeps the
derived seeds of neighbouring runs apart: run 1's step 3 never draws what run 2's step 3
or run 1's step 4 draws.
"""

from __future__ import annotations

SEED_STRIDE = 1_000_003
"""A prime above any number of steps or updates a run takes."""


def mix_seed(seed: int, offset: int) -> int:
    """The seed of item ``offset`` (a step, an update) of the run seeded ``seed``.

    >>> mix_seed(2, 5), mix_seed(0, -1)
    (2000011, -1)
    """
    return seed * SEED_STRIDE + offset
