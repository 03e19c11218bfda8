"""How the texts of one encode call are laid out in forward passes (pure Python, no torch).

Runs wherever a ``DenseEncoder`` encodes: the retrieval actor, the HTTP server, the index
build. A pass is a ``(rows, width)`` grid of token slots. Two layouts:

- padded: one text per row, rows sorted by length and split where padding would cost more
  than another pass (``plan_chunks``). Works with any encoder.
- packed: several short texts share a row, each attending only to itself and with its own
  position ids (best-fit decreasing, ``pack_rows``). No padding to the longest text and one
  pass for a whole batch of queries: on CPU, 32 MuSiQue queries cost 0.75 instead of 1.1-1.35
  ms each (MiniLM, bf16, one thread; docs/retrieval.md). Needs a model with absolute position
  ids and an additive attention mask (BERT: MiniLM, e5, bge). Texts longer than
  ``PACK_MAX_TOKENS`` are padded instead: in rows of 256 tokens the (rows, W, W) attention
  mask and softmax cost more than the padding saved (passages: 19 vs 10 ms each, bf16), and
  passages, mostly longer, gain nothing from it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, replace

PASS_COST_TOKENS = 32
"""Fixed cost of one forward pass (op dispatch, reading the weights), in padded tokens: measured
on CPU for MiniLM as ~4.5 ms per pass vs ~0.15-0.25 ms per token (benchmarks/bench_retrieval)."""

PACK_MIN_WIDTH = 32
"""Narrowest packed row, in tokens: rows of 32 hold 3-5 typical queries (~8 tokens) and pack
64 queries into fewer slots than rows as wide as the longest query (measured, MiniLM bf16)."""

PACK_MAX_TOKENS = 32
"""Longest text that is packed (99% of MuSiQue keyword queries are shorter; rows of 64 are no
faster for queries and ~6% slower for short passages in fp32, measured)."""


@dataclass(frozen=True)
class Layout:
    """One forward pass of ``num_rows x width`` slots: text ``texts[k]`` (an index into the encode
    call's texts) fills row ``rows[k]`` from column ``offsets[k]`` on. ``packed``: rows may hold
    several texts (the encoder then masks attention per text and restarts position ids)."""

    texts: list[int]
    rows: list[int]
    offsets: list[int]
    num_rows: int
    width: int
    packed: bool = False


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


def padded_layouts(lengths: Sequence[int], max_rows: int) -> list[Layout]:
    """One text per row, by ascending length, split by ``plan_chunks``; each pass as wide as its
    longest text.

    >>> [(p.texts, p.width) for p in padded_layouts([9, 3, 4], max_rows=2)]
    [([1, 2], 4), ([0], 9)]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    layouts, start = [], 0
    for end in plan_chunks([lengths[i] for i in order], max_rows):
        texts = order[start:end]
        layouts.append(Layout(texts, list(range(len(texts))), [0] * len(texts), len(texts), lengths[texts[-1]]))
        start = end
    return layouts


def pack_rows(lengths: Sequence[int], width: int) -> tuple[list[int], list[int], int]:
    """Best-fit decreasing: ``(row, offset)`` of each text in rows of ``width`` slots, and the
    number of rows. Each text goes to the fullest row it still fits in.

    >>> pack_rows([5, 2, 3, 4], width=8)
    ([0, 1, 0, 1], [0, 4, 5, 0], 2)
    """
    rows, offsets = [0] * len(lengths), [0] * len(lengths)
    free: list[tuple[int, int]] = []  # (free slots, row), sorted
    num_rows = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > width:
            raise ValueError(f"a text of {lengths[i]} tokens does not fit in rows of {width}")
        j = bisect.bisect_left(free, (lengths[i], -1))
        if j == len(free):
            row, used = num_rows, 0
            num_rows += 1
        else:
            space, row = free.pop(j)
            used = width - space
        rows[i], offsets[i] = row, used
        if used + lengths[i] < width:
            bisect.insort(free, (width - used - lengths[i], row))
    return rows, offsets, num_rows


def packed_layouts(lengths: Sequence[int], max_rows: int, min_width: int = PACK_MIN_WIDTH) -> list[Layout]:
    """Texts packed into rows as wide as the longest text, or ``min_width`` when the texts
    fill that much, at most ``max_rows`` rows per pass.

    >>> [(p.texts, p.rows, p.num_rows, p.width) for p in packed_layouts([3, 6, 2, 4], max_rows=8, min_width=8)]
    [([0, 1, 2, 3], [1, 0, 0, 1], 2, 8)]
    >>> [(p.num_rows, p.width) for p in packed_layouts([3, 2], max_rows=8, min_width=8)]
    [(1, 5)]
    """
    if not lengths:
        return []
    width = max(max(lengths), min(min_width, sum(lengths)))
    rows, offsets, num_rows = pack_rows(lengths, width)
    layouts = []
    for first in range(0, num_rows, max_rows):
        texts = [i for i in range(len(lengths)) if first <= rows[i] < first + max_rows]
        layouts.append(Layout(texts, [rows[i] - first for i in texts], [offsets[i] for i in texts],
                              min(max_rows, num_rows - first), width, packed=True))
    return layouts


def plan_layouts(lengths: Sequence[int], max_rows: int, pack: bool) -> list[Layout]:
    """The passes for texts of ``lengths``: with ``pack``, texts of up to ``PACK_MAX_TOKENS``
    packed (when there are several) and longer ones padded; else all padded. A lone text gets
    the plain padded pass, so one query at a time costs what it did without packing.

    >>> [(p.texts, p.num_rows, p.width, p.packed) for p in plan_layouts([3, 100, 5], max_rows=8, pack=True)]
    [([0, 2], 1, 8, True), ([1], 1, 100, False)]
    >>> [(p.texts, p.packed) for p in plan_layouts([3], max_rows=8, pack=True)]
    [([0], False)]
    """
    short = [i for i, n in enumerate(lengths) if pack and n <= PACK_MAX_TOKENS]
    if len(short) < 2:
        short = []
    packed = set(short)
    long = [i for i in range(len(lengths)) if i not in packed]
    layouts = [replace(p, texts=[short[t] for t in p.texts])
               for p in packed_layouts([lengths[i] for i in short], max_rows)]
    return layouts + [replace(p, texts=[long[t] for t in p.texts])
                      for p in padded_layouts([lengths[i] for i in long], max_rows)]
