"""Weight sync as one collective broadcast from learner rank 0 to every vLLM worker.

Runs in learner rank 0 (the sender; under ZeRO-3 every learner rank helps gather, only
rank 0 sends) and in every worker process of every vLLM engine (the receivers, through
``WeightSyncExtension``, vLLM's ``worker_extension_cls``). The group is a process group of
its own, on its own store, apart from the default group, so DeepSpeed's and vLLM's groups
are untouched: gloo on CPU, NCCL on GPUs, the same calls.

Per sync the sender packs a bucket of parameters (at most ``bucket_mb``, or one larger
tensor) into one byte buffer and broadcasts it; receivers view the buffer as the named
tensors and feed them to vLLM's in-place reload (the model's own ``load_weights``, so
tensor-parallel slicing is vLLM's). Only the manifest (names, shapes, dtypes, offsets)
travels by RPC; no tensor goes through an object store or a file.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_ALIGN = 64
"""Byte alignment of each tensor in a bucket (a view as any dtype needs its element size)."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor in a bucket: its names (tied parameters share one copy), shape, dtype, offset."""

    names: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def nbytes(self) -> int:
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * _dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Bucket:
    """Tensors sent in one broadcast, packed into ``nbytes`` bytes."""

    tensors: tuple[TensorSpec, ...]
    nbytes: int


@dataclass(frozen=True)
class Manifest:
    """The buckets of one sync, in the model's parameter order (layer by layer)."""

    buckets: tuple[Bucket, ...]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    def to_wire(self) -> list[Any]:
        """Plain lists, for vLLM's RPC (it serializes with msgpack)."""
        return [[b.nbytes, [[list(t.names), list(t.shape), t.dtype, t.offset] for t in b.tensors]]
                for b in self.buckets]

    @classmethod
    def from_wire(cls, wire: Sequence[Any]) -> Manifest:
        return cls(tuple(Bucket(tuple(TensorSpec(tuple(n), tuple(s), d, o) for n, s, d, o in ts), int(nb))
                         for nb, ts in wire))


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"weight manifest: unknown dtype {name!r}")
    return dtype


def unique_tensors(module: nn.Module) -> list[tuple[tuple[str, ...], Tensor]]:
    """The module's state-dict entries, each storage once with all its names (tied weights)."""
    groups: dict[int, tuple[list[str], Tensor]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), ([], tensor))[0].append(name)
    return [(tuple(names), tensor) for names, tensor in groups.values()]


def _full_shape(tensor: Tensor) -> tuple[int, ...]:
    """The whole tensor's shape (a ZeRO-3 partitioned parameter keeps it in ``ds_shape``)."""
    return tuple(int(d) for d in getattr(tensor, "ds_shape", tensor.shape))


def _slot_bytes(tensor: Tensor, nbytes: int) -> int:
    """Bytes a tensor takes in a bucket (before alignment). A ZeRO-3 partitioned parameter takes all its
    padded partitions (partition size x ranks), so they are gathered straight into the bucket."""
    partition = getattr(tensor, "ds_tensor", None)
    if partition is not None:
        nbytes = max(nbytes, int(partition.ds_numel) * _zero_ranks(tensor) * tensor.element_size())
    return nbytes


def _zero_ranks(tensor: Tensor) -> int:
    import torch.distributed as dist

    return int(dist.get_world_size(group=tensor.ds_process_group))  # type: ignore[attr-defined]


def plan_buckets(module: nn.Module, bucket_mb: float) -> Manifest:
    """Group the module's tensors into buckets of at most ``bucket_mb`` MiB (a larger tensor alone)."""
    if bucket_mb <= 0:
        raise ValueError(f"learner.sync_bucket_mb must be positive, got {bucket_mb}")
    limit = int(bucket_mb * 2**20)
    buckets: list[Bucket] = []
    specs: list[TensorSpec] = []
    used = 0
    for names, tensor in unique_tensors(module):
        spec = TensorSpec(names, _full_shape(tensor), str(tensor.dtype).removeprefix("torch."), 0)
        slot = _slot_bytes(tensor, spec.nbytes)
        if specs and used + slot > limit:
            buckets.append(Bucket(tuple(specs), used))
            specs, used = [], 0
        specs.append(TensorSpec(spec.names, spec.shape, spec.dtype, used))
        used += -(-slot // _ALIGN) * _ALIGN
    if specs:
        buckets.append(Bucket(tuple(specs), used))
    return Manifest(tuple(buckets))


class Stopwatch:
    """Seconds spent per phase of a sync, summed over buckets (the benchmark's ``--profile``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap to ``phase``."""
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def _view(buffer: Tensor, spec: TensorSpec) -> Tensor:
    return buffer[spec.offset:spec.offset + spec.nbytes].view(_dtype(spec.dtype)).view(spec.shape)


class InFlight:
    """A started broadcast of ``buffer`` (kept alive until it is done)."""

    def __init__(self, work: Any, buffer: Tensor) -> None:
        self.work, self.buffer = work, buffer

    def wait(self) -> Tensor:
        """Block until done; returns the buffer (raises on a dead peer or the timeout)."""
        self.work.wait()
        if self.buffer.is_cuda:
            torch.cuda.current_stream().synchronize()
        return self.buffer


class WeightGroup:
    """A process group of its own: learner rank 0 (rank 0) and every vLLM worker.

    ``store_path``: meet through a file (all members on one machine, a loopback cluster;
    nothing listens); otherwise rank 0 serves a ``TCPStore`` at ``host:port``. ``host`` is
    also the address gloo binds to on a loopback cluster.
    """

    def __init__(self, rank: int, world_size: int, host: str, port: int, store_path: str | None,
                 timeout_s: float, device: torch.device) -> None:
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        store: Any
        if store_path is not None:
            store = dist.FileStore(store_path, world_size)
        else:
            store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        store = dist.PrefixStore("weightsync/", store)
        self.rank, self.world_size, self.device = rank, world_size, device
        if device.type == "cuda":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.pg: Any = dist.ProcessGroupNCCL(store, rank, world_size, options)
        else:
            options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
            options._timeout = timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=host if store_path else "")]
            self.pg = dist.ProcessGroupGloo(store, rank, world_size, options)
        self._store = store

    def broadcast(self, buffer: Tensor) -> None:
        """Rank 0's ``buffer`` into everyone's (blocks; raises on a dead peer or the timeout)."""
        self.start_broadcast(buffer).wait()

    def start_broadcast(self, buffer: Tensor) -> InFlight:
        """Start broadcasting rank 0's ``buffer``; ``wait()`` on the result (raises as ``broadcast``)."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return InFlight(self.pg.broadcast([buffer], opts), buffer)

    def close(self) -> None:
        """Drop the group (a failed group is never reused; a new one is formed)."""
        shutdown = getattr(self.pg, "shutdown", None)
        if shutdown is not None and self.device.type == "cuda":
            shutdown()
        self.pg = None
        self._store = None


def send_buckets(group: WeightGroup | None, module: nn.Module, manifest: Manifest, zero3: bool,
                 watch: Stopwatch | None = None) -> bool:
    """Fill (ZeRO-3: all learner ranks call, in step) and broadcast each bucket from rank 0.

    ``group`` is None on the other learner ranks: they only send their partitions to rank 0.
    Bucket k is broadcast while bucket k+1 is gathered (two buckets in memory). A failed
    broadcast (an engine died, the timeout) stops the sending but not the gathers, so the
    learner ranks stay in step; returns False then. ``watch`` gets the time per phase.
    """
    watch = watch or Stopwatch()
    tensors = {names[0]: t for names, t in unique_tensors(module)}
    ok = group is not None
    sending: InFlight | None = None
    for bucket in manifest.buckets:
        params = [tensors[spec.names[0]] for spec in bucket.tensors]
        buffer = None if group is None else torch.empty(bucket.nbytes, dtype=torch.uint8, device=group.device)
        watch.lap("other")
        fill_bucket(buffer, bucket, params, zero3)
        watch.lap("gather")
        ok = _finish(sending, ok)
        sending = None
        watch.lap("broadcast")
        if ok and group is not None and buffer is not None:
            try:
                sending = group.start_broadcast(buffer)
            except RuntimeError as exc:
                ok = _failed(exc)
    ok = _finish(sending, ok)
    watch.lap("broadcast")
    return ok


def _finish(sending: InFlight | None, ok: bool) -> bool:
    if sending is None:
        return ok
    try:
        sending.wait()
    except RuntimeError as exc:  # gloo/NCCL: a peer closed or the timeout passed
        return _failed(exc)
    return ok


def _failed(exc: BaseException) -> bool:
    logger.warning("weight broadcast failed (%s); gathering on without sending", exc)
    return False


def fill_bucket(buffer: Tensor | None, bucket: Bucket, params: Sequence[Tensor], zero3: bool) -> None:
    """Rank 0's ``buffer`` gets the bucket's tensors (other ranks pass None).

    Under ZeRO-3 each rank sends its partition of each parameter straight into its slot of
    rank 0's buffer (one gather per parameter, all in flight at once): nothing is gathered
    to the other ranks and nothing is copied twice. Otherwise rank 0 copies its parameters.
    """
    import torch.distributed as dist

    works = []
    for spec, param in zip(bucket.tensors, params, strict=True):
        partition = getattr(param, "ds_tensor", None) if zero3 else None
        if partition is None:
            if buffer is not None:
                _view(buffer, spec).copy_(param.detach())
            continue
        ranks, size = _zero_ranks(param), int(partition.ds_numel)
        pg = param.ds_process_group  # type: ignore[attr-defined]
        chunks = None
        if dist.get_rank(group=pg) == 0:
            if buffer is None:
                raise RuntimeError("weight sync: ZeRO-3 partition rank 0 must be the sending learner rank")
            slot = buffer[spec.offset:spec.offset + size * ranks * partition.element_size()]
            chunks = list(slot.view(partition.dtype).split(size))
        works.append(dist.gather(partition.detach().reshape(-1)[:size], chunks, group=pg, group_dst=0,
                                 async_op=True))
    for work in works:
        if work is not None:
            work.wait()


def receive_buckets(group: WeightGroup, manifest: Manifest,
                    watch: Stopwatch | None = None) -> Iterator[tuple[str, Tensor]]:
    """Each bucket as it arrives, as ``(name, tensor)`` views of the received buffer.

    Bucket k+1 is received while the consumer loads bucket k (a fresh buffer each: the
    loader may hold views of a bucket until the rest of their layer arrives). ``watch``:
    time waiting for a bucket (``receive``) and between buckets (the consumer's ``load``).
    """
    watch = watch or Stopwatch()
    buckets = manifest.buckets
    incoming = _start_receive(group, buckets[0]) if buckets else None
    for k, bucket in enumerate(buckets):
        watch.lap("load")
        assert incoming is not None
        buffer = incoming.wait()
        incoming = _start_receive(group, buckets[k + 1]) if k + 1 < len(buckets) else None
        watch.lap("receive")
        for spec in bucket.tensors:
            tensor = _view(buffer, spec)
            for name in spec.names:
                yield name, tensor


def _start_receive(group: WeightGroup, bucket: Bucket) -> InFlight:
    return group.start_broadcast(torch.empty(bucket.nbytes, dtype=torch.uint8, device=group.device))


class WeightSyncExtension:
    """Methods mixed into every vLLM worker (``worker_extension_cls``), called by ``collective_rpc``.

    Names must not clash with the worker's own (vLLM checks). ``self`` is the vLLM worker:
    ``rank`` (its rank in the engine), ``device``, ``model_runner``, ``vllm_config``.
    """

    _weight_group: WeightGroup | None = None
    _weight_sync_seconds: dict[str, float] | None = None

    def join_weight_group(self, rank_offset: int, world_size: int, host: str, port: int,
                          store_path: str | None, timeout_s: float) -> int:
        """Join a new weight-update group as rank ``rank_offset`` + this worker's rank."""
        self.leave_weight_group()
        worker: Any = self
        rank = rank_offset + int(worker.rank)
        self._weight_group = WeightGroup(rank, world_size, host, port, store_path, timeout_s,
                                         torch.device(worker.device))
        return rank

    def leave_weight_group(self) -> None:
        if self._weight_group is not None:
            self._weight_group.close()
            self._weight_group = None

    def receive_weight_broadcast(self, wire_manifest: list[Any]) -> int:
        """Receive one sync's buckets and load them in place; returns the bytes received.

        On a failure mid-way (the sender died, the timeout) the reload is still finalized,
        so the model stays usable (partly updated: the caller must not adopt the version),
        and the group is dropped.
        """
        from vllm.model_executor.model_loader.reload.layerwise import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )

        if self._weight_group is None:
            raise RuntimeError("receive_weight_broadcast before join_weight_group")
        worker: Any = self
        manifest = Manifest.from_wire(wire_manifest)
        model = worker.model_runner.get_model()
        watch = Stopwatch()
        initialize_layerwise_reload(model)
        watch.lap("init")
        try:
            with torch.no_grad():
                model.load_weights(receive_buckets(self._weight_group, manifest, watch))
            watch.lap("load")
        except BaseException:
            self.leave_weight_group()
            raise
        finally:
            finalize_layerwise_reload(model, worker.vllm_config.model_config)
            watch.lap("finalize")
            self._weight_sync_seconds = watch.seconds
        return manifest.nbytes

    def weight_sync_seconds(self) -> dict[str, float]:
        """Seconds per phase of this worker's last ``receive_weight_broadcast`` (profiling)."""
        return dict(self._weight_sync_seconds or {})
