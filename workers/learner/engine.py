"""Training engines behind one seam: DeepSpeed (default) and plain torch (one process).

Runs inside a learner rank. DeepSpeed is imported inside the functions that need it.
On CPU it uses its CPU accelerator (``DS_ACCELERATOR=cpu``) over gloo (DESIGN.md 5); on
GPUs NCCL with bf16. Both engines take one ``backward`` and one ``step`` per micro-batch
and update the weights at the end of each mini-batch (gradient accumulation).

Gradient scale: the PPO losses of a micro-batch are already divided by the number of
action tokens of the whole mini-batch (``ppo.token_mean``), so the gradient of the
mini-batch is the *sum* over micro-batches and ranks. DeepSpeed divides by the
accumulation steps (switched off with ``scale_wrt_gas=False``) and averages over ranks
(undone by multiplying the loss by the world size).

Non-finite gradients: an optimizer step whose gradient norm is inf or NaN (from a
non-finite loss or an overflow) is skipped, leaving the weights and the optimizer state as
they were; ``skipped()`` says so after each step. DeepSpeed's ZeRO optimizers (stages 1-3)
and its bf16 optimizer skip such steps themselves (``skipped_steps``); for the plain
optimizer of ZeRO-0 in fp32 the engine drops the gradients before the step, so the
optimizer passes over every parameter.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from workers.config import LearnerConfig

logger = logging.getLogger(__name__)


class TrainEngine(Protocol):
    """What the workers need from a training engine."""

    module: nn.Module
    world_size: int

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def backward(self, loss: Tensor) -> None: ...
    def step(self) -> None: ...
    def lr(self) -> float: ...
    def grad_norm(self) -> float: ...
    def skipped(self) -> bool: ...
    def full_state_dict(self) -> dict[str, Tensor]: ...
    def save(self, directory: str) -> None: ...
    def load(self, directory: str) -> None: ...


def lr_lambda(warmup_steps: int, schedule: str, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warmup, then constant or cosine to 0."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine" and total_steps > warmup_steps:
            progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def warmup_steps(cfg: LearnerConfig, ratio: float | None, total_steps: int) -> int:
    """Warmup in optimizer steps: ``ratio`` of the run's ``total_steps`` when set (as the
    release's ``lr_warmup_steps_ratio``), else ``learner.warmup_steps``."""
    return cfg.warmup_steps if ratio is None else int(ratio * total_steps)


def accumulation_steps(cfg: LearnerConfig, world_size: int) -> int:
    """Micro-batches per rank per optimizer step."""
    per_rank, rem = divmod(cfg.mini_batch_size, world_size)
    if rem or per_rank % cfg.micro_batch_size:
        raise ValueError(f"mini_batch_size {cfg.mini_batch_size} does not split into "
                         f"{world_size} ranks x micro-batches of {cfg.micro_batch_size}")
    return per_rank // cfg.micro_batch_size


def uses_cuda() -> bool:
    """True when this process trains on GPUs."""
    return torch.cuda.is_available()


def train_dtype(cfg: LearnerConfig) -> torch.dtype:
    """Weights dtype of the trained models: bf16 on GPUs, fp32 on CPU (``precision``)."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and uses_cuda()):
        return torch.bfloat16
    return torch.float32


# ----------------------------------------------------------------------------- DeepSpeed


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int,
                     rendezvous_file: str | None = None) -> None:
    """Join the process group (gloo on CPU, NCCL on GPU) with rank 0 as the rendezvous.

    With ``rendezvous_file`` (ranks on one machine, a loopback cluster) the ranks meet
    through that file and gloo talks over ``lo``: torch's TCP rendezvous server would
    listen on every interface, whatever ``master_addr`` says.
    """
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0",
                      LOCAL_WORLD_SIZE="1", MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
    if not uses_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if rendezvous_file is not None and not uses_cuda():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        store = torch.distributed.FileStore(rendezvous_file, world_size)
        torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    import deepspeed

    from workers.quiet import quiet_stdout

    with quiet_stdout():  # DeepSpeed prints a notice when it builds its shared-memory op
        deepspeed.init_distributed(dist_backend="nccl" if uses_cuda() else "gloo",
                                   auto_mpi_discovery=False, verbose=False)


def deepspeed_config(cfg: LearnerConfig, lr: float, world_size: int, train: bool = True
                     ) -> dict[str, Any]:
    """The DeepSpeed config of one model, all from ``LearnerConfig``."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer and train:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": uses_cuda()}
    if cfg.offload_params and cfg.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": uses_cuda()}
    config: dict[str, Any] = {
        "train_batch_size": cfg.mini_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": accumulation_steps(cfg, world_size),
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": train_dtype(cfg) == torch.bfloat16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train:
        params: dict[str, Any] = {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                  "weight_decay": cfg.weight_decay}
        if not cfg.offload_optimizer and not uses_cuda():
            params["torch_adam"] = True  # plain torch AdamW: no op to build on CPU
        config["optimizer"] = {"type": "AdamW", "params": params}
    return config


class DeepSpeedEngine:
    """A model wrapped by ``deepspeed.initialize`` with optimizer and LR schedule."""

    def __init__(self, module: nn.Module, cfg: LearnerConfig, lr: float, world_size: int,
                 total_steps: int = 0, warmup_ratio: float | None = None) -> None:
        import deepspeed

        schedule = lr_lambda(warmup_steps(cfg, warmup_ratio, total_steps), cfg.lr_schedule, total_steps)
        params = [p for p in module.parameters() if p.requires_grad]
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, model_parameters=params,
            config=deepspeed_config(cfg, lr, world_size),
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
        self.module: nn.Module = self.engine.module
        self.world_size = world_size
        self._last_grad_norm = 0.0
        self._skipped = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine(*args, **kwargs)

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> None:
        boundary = self.engine.is_gradient_accumulation_boundary()
        manual = boundary and self.engine.zero_optimization_stage() == 0
        # ZeRO-0 does not record the norm; its gradients are whole and reduced by now.
        pre_norm = _grad_norm(self.module) if manual else None
        skipped_before = self.engine.skipped_steps
        own_skip = (pre_norm is not None and not math.isfinite(pre_norm)
                    and not hasattr(self.engine.optimizer, "overflow"))
        if own_skip:
            self._step_without_gradients()
        else:
            self.engine.step()
        if boundary:
            norm = self.engine.get_global_grad_norm()
            norm = pre_norm if norm is None or own_skip else norm
            self._last_grad_norm = float(norm) if norm is not None else float("nan")
            self._skipped = own_skip or self.engine.skipped_steps > skipped_before

    def _step_without_gradients(self) -> None:
        """DeepSpeed's step with every gradient dropped: the optimizer passes over each parameter
        (weights and optimizer state stay as they were); DeepSpeed's own clipping, which fails
        without any gradient, is off for this one step."""
        self.engine.zero_grad()
        clip = self.engine._config.gradient_clipping
        self.engine._config.gradient_clipping = 0.0
        try:
            self.engine.step()
        finally:
            self.engine._config.gradient_clipping = clip

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def grad_norm(self) -> float:
        return self._last_grad_norm

    def skipped(self) -> bool:
        return self._skipped

    def full_state_dict(self) -> dict[str, Tensor]:
        return gathered_state_dict(self.module, self.engine.zero_optimization_stage() == 3)

    def save(self, directory: str) -> None:
        self.engine.save_checkpoint(directory, tag="state")

    def load(self, directory: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag="state")
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")


class DeepSpeedInference:
    """A frozen model (the reference): ZeRO-3 shards it over ranks, other stages keep it whole."""

    def __init__(self, module: nn.Module, cfg: LearnerConfig, world_size: int) -> None:
        self.module = module
        self._call: Callable[..., Any] = module
        if cfg.zero_stage == 3:
            import deepspeed

            engine, _, _, _ = deepspeed.initialize(
                model=module, config=deepspeed_config(cfg, 0.0, world_size, train=False))
            self._call, self.module = engine, engine.module
        elif uses_cuda():
            self.module = module.to(device="cuda", dtype=train_dtype(cfg))
            self._call = self.module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)


def _grad_norm(module: nn.Module) -> float:
    grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def gathered_state_dict(module: nn.Module, zero3: bool) -> dict[str, Tensor]:
    """Full state dict on CPU under the module's own (Hugging Face) names.

    Under ZeRO-3 every rank holds a shard of each parameter; all ranks must call this
    together, as each parameter is gathered in turn (one parameter's memory at a time).
    """
    out: dict[str, Tensor] = {}
    state = module.state_dict(keep_vars=True)
    if not zero3:
        return {k: v.detach().cpu().clone() for k, v in state.items()}
    import deepspeed

    for name, tensor in state.items():
        if hasattr(tensor, "ds_id"):
            with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                out[name] = tensor.detach().cpu().clone()
        else:
            out[name] = tensor.detach().cpu().clone()
    return out


# ----------------------------------------------------------------------------- plain torch


class TorchEngine:
    """One-process engine with the same seam: AdamW, LambdaLR, norm clipping, accumulation.

    For tests and benchmarks that must not pay DeepSpeed's start-up; not data parallel.
    """

    def __init__(self, module: nn.Module, cfg: LearnerConfig, lr: float, world_size: int = 1,
                 total_steps: int = 0, warmup_ratio: float | None = None) -> None:
        if world_size != 1:
            raise ValueError("the torch engine runs in one process; use DeepSpeed for ranks > 1")
        self.module = module.to("cuda") if uses_cuda() else module
        self.world_size = 1
        self.optimizer = torch.optim.AdamW(
            [p for p in module.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999),
            eps=1e-8, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(warmup_steps(cfg, warmup_ratio, total_steps), cfg.lr_schedule, total_steps))
        self.grad_clip = cfg.grad_clip
        self.accumulation = accumulation_steps(cfg, 1)
        self._micro = 0
        self._last_grad_norm = 0.0
        self._skipped = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self._micro += 1
        if self._micro % self.accumulation:
            return
        params = [p for p in self.module.parameters() if p.requires_grad]
        self._last_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        self._skipped = not math.isfinite(self._last_grad_norm)
        if not self._skipped:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def grad_norm(self) -> float:
        return self._last_grad_norm

    def skipped(self) -> bool:
        return self._skipped

    def full_state_dict(self) -> dict[str, Tensor]:
        return gathered_state_dict(self.module, zero3=False)

    def save(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "micro": self._micro},
                   Path(directory) / "torch_state.pt")

    def load(self, directory: str) -> None:
        state = torch.load(Path(directory) / "torch_state.pt", weights_only=False)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._micro = state["micro"]


def build_engine(module: nn.Module, cfg: LearnerConfig, lr: float, world_size: int,
                 total_steps: int = 0, warmup_ratio: float | None = None) -> TrainEngine:
    """The engine ``cfg.engine`` names, around a trainable module; ``total_steps``: the run's
    optimizer steps (the LR schedule's length)."""
    if cfg.engine == "deepspeed":
        return DeepSpeedEngine(module, cfg, lr, world_size, total_steps, warmup_ratio)
    if cfg.engine == "torch":
        return TorchEngine(module, cfg, lr, world_size, total_steps, warmup_ratio)
    raise ValueError(f"learner.engine must be deepspeed or torch, got {cfg.engine!r}")
