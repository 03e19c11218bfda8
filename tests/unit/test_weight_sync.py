"""Weight-broadcast buckets and the gloo group, without Ray or vLLM (workers/weight_sync.py)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from torch import nn

from workers import weight_sync as ws


class Tied(nn.Module):
    """An embedding (6 x 4 fp32 = 96 bytes) shared by a head, and a bias (3 fp32 = 12 bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.embed.weight
        self.bias = nn.Parameter(torch.arange(3, dtype=torch.float32))


def test_buckets_pack_tensors_aligned_and_tied_names_share_one_copy() -> None:
    manifest = ws.plan_buckets(Tied(), bucket_mb=160 / 2**20)  # 160 bytes
    # State-dict order: the root's own bias, then the children. bias (12 B, padded to 64)
    # + embed (96 B at offset 64) = 160 <= 160: one bucket.
    assert len(manifest.buckets) == 1
    (bias, embed) = manifest.buckets[0].tensors
    assert bias.names == ("bias",) and bias.offset == 0 and bias.nbytes == 12
    assert embed.names == ("embed.weight", "head.weight") and embed.offset == 64 and embed.nbytes == 96
    assert manifest.buckets[0].nbytes == 64 + 128
    small = ws.plan_buckets(Tied(), bucket_mb=100 / 2**20)  # 64 + 96 > 100: two buckets
    assert [len(b.tensors) for b in small.buckets] == [1, 1]
    assert ws.Manifest.from_wire(small.to_wire()) == small


def test_bucket_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="sync_bucket_mb"):
        ws.plan_buckets(Tied(), bucket_mb=0)


def _receiver(store: str, wire: list, out: mp.Queue) -> None:
    group = ws.WeightGroup(1, 2, "127.0.0.1", 0, store, 60.0, torch.device("cpu"))
    got = {name: t.clone() for name, t in ws.receive_buckets(group, ws.Manifest.from_wire(wire))}
    out.put({k: v.tolist() for k, v in got.items()})


def test_a_broadcast_delivers_every_name_over_gloo(tmp_path: Path) -> None:
    model = Tied()
    manifest = ws.plan_buckets(model, bucket_mb=100 / 2**20)
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_receiver, args=(str(tmp_path / "store"), manifest.to_wire(), out))
    proc.start()
    group = ws.WeightGroup(0, 2, "127.0.0.1", 0, str(tmp_path / "store"), 60.0, torch.device("cpu"))
    assert ws.send_buckets(group, model, manifest, zero3=False)
    got = out.get(timeout=120)
    proc.join(timeout=60)
    assert sorted(got) == ["bias", "embed.weight", "head.weight"]
    assert got["bias"] == [0.0, 1.0, 2.0]
    assert got["head.weight"] == got["embed.weight"] == model.embed.weight.tolist()
