"""Splitting a batch over ranks or shards (one home for the sharding helpers).

Ray-free; runs in the driver, the reward actors and the learner ranks. Every shard is a
contiguous ``[start, stop)`` range, so shards concatenated in order give the batch back.
"""

from __future__ import annotations

import numpy as np


def shard_range(size: int, shard: int, num_shards: int) -> tuple[int, int]:
    """``[start, stop)`` of shard ``shard`` when ``size`` items split into ``num_shards``
    (the first ``size % num_shards`` shards take one more).

    >>> [shard_range(5, k, 3) for k in range(3)]
    [(0, 2), (2, 4), (4, 5)]
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside [0, {num_shards})")
    base, extra = divmod(size, num_shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (shard < extra)


def shard_indices(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous share of a mini-batch (or of the whole batch); the ranks of a
    data-parallel learner must get equal shares, so an uneven split is refused."""
    if len(indices) % world_size:
        raise ValueError(f"{len(indices)} samples do not split over {world_size} ranks")
    start, stop = shard_range(len(indices), rank, world_size)
    return indices[start:stop]


def rank_range(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of this rank's equal share of a batch (forward-only passes).

    >>> rank_range(8, 1, 2)
    (4, 8)
    """
    if batch_size % world_size:
        raise ValueError(f"{batch_size} samples do not split over {world_size} ranks")
    return shard_range(batch_size, rank, world_size)
