"""Learner ranks as plain classes: policy (+ frozen reference) and critic, Ray-free.

Each instance is one data-parallel rank, run inside a Ray actor by
``actors.learner.LearnerGroup`` (or in-process for one rank). Call ``init_distributed``
first (it joins the process group and builds the engines), then per rollout batch:
``compute`` on the rank's shard -> the whole batch's ``PPOBatch`` (built once, see
``data.build_ppo_batch``) -> ``ppo_update`` on every rank.
CPU or GPU; on CPU DeepSpeed's CPU accelerator over gloo.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from workers import weight_sync as ws
from workers.config import LearnerConfig
from workers.faults import hang_point
from workers.learner import engine as eng
from workers.learner import model as mdl
from workers.learner import ppo
from workers.learner.data import PPOBatch, minibatches
from workers.seeds import mix_seed
from workers.sharding import rank_range, shard_indices
from workers.types import TrajectoryBatch

logger = logging.getLogger(__name__)

GRAD_NORM = "ppo/grad_norm"
CRITIC_GRAD_NORM = "ppo/critic_grad_norm"
LR = "ppo/lr"
SFT_LOSS = "sft/loss"
SKIPPED_UPDATES = "learner/skipped_updates"
"""Optimizer steps of an update skipped for a non-finite loss or gradient norm (a count)."""


class NonFiniteUpdates(RuntimeError):
    """``learner.max_nonfinite_updates`` optimizer steps in a row had a non-finite gradient norm."""


_SUMMED = (ppo.POLICY_LOSS, ppo.VALUE_LOSS, ppo.APPROX_KL, ppo.CLIPFRAC, ppo.VALUE_CLIPFRAC,
           ppo.ENTROPY, ppo.KL_LOSS, SFT_LOSS, ppo.IS_WEIGHT_MEAN, ppo.IS_CAPPED_FRAC)
"""Update metrics that are token means over the global mini-batch: ranks add them up."""


def cpu_threads(cfg: LearnerConfig) -> int:
    """Torch threads for one CPU rank: ``cfg.num_threads``, else the cores shared among the ranks."""
    if cfg.num_threads is not None:
        return cfg.num_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // cfg.num_ranks)


class LearnerWorker:
    """One rank holding the policy with its reference and/or the critic (``roles``)."""

    def __init__(self, cfg: LearnerConfig, model_path: str, roles: Sequence[str] = ("policy",),
                 seed: int = 0, total_steps: int = 0, temperature: float = 1.0,
                 trust_remote_code: bool = False) -> None:
        """``total_steps``: the run's optimizer steps (the LR schedule's length; StePPO's
        ``ppo_optimizer_steps``). ``temperature``: the rollouts' sampling temperature, at which PPO scores the
        policy's and the reference's tokens (SFT always trains the plain logits).
        ``trust_remote_code``: ``model.trust_remote_code``, as the rollout engines get it."""
        unknown = set(roles) - {"policy", "critic"}
        if unknown or not roles:
            raise ValueError(f"roles must be policy and/or critic, got {list(roles)}")
        self.cfg, self.model_path, self.roles = cfg, model_path, tuple(roles)
        self.seed, self.total_steps, self.temperature = seed, total_steps, temperature
        self.trust_remote_code = trust_remote_code
        self.rank, self.world_size = 0, 1
        self.policy: eng.TrainEngine | None = None
        self.ref: eng.DeepSpeedInference | None = None
        self.critic: eng.TrainEngine | None = None
        self.updates = 0
        self.nonfinite_in_row = 0
        self.device = torch.device("cuda" if eng.uses_cuda() else "cpu")
        self._weight_group: ws.WeightGroup | None = None
        self._weight_sync_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ setup

    def init_distributed(self, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                         master_port: int = 29500, rendezvous_file: str | None = None) -> None:
        """Join the process group (rank 0 is the rendezvous) and build the engines.

        ``rendezvous_file``: meet through a file instead of a TCP server (one machine only).
        """
        self.rank, self.world_size = rank, world_size
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(self.cfg))
        if self.cfg.engine == "deepspeed":
            eng.init_distributed(rank, world_size, master_addr, master_port, rendezvous_file)
        elif world_size != 1:
            raise ValueError("learner.engine=torch runs one rank; use deepspeed for more")
        self._seed_all(self.seed)
        dtype = torch.float32  # master weights; DeepSpeed casts to bf16 on GPUs itself
        gc, trc = self.cfg.gradient_checkpointing, self.trust_remote_code
        if "policy" in self.roles:
            module = mdl.load_causal_lm(self.model_path, dtype, gc, trc)
            self.policy = eng.build_engine(module, self.cfg, self.cfg.actor_lr, world_size,
                                           self.total_steps, self.cfg.actor_warmup_ratio)
            if self._needs_ref():
                ref = mdl.load_reference(self.model_path, eng.train_dtype(self.cfg), trc)
                self.ref = eng.DeepSpeedInference(ref, self.cfg, world_size)
        if "critic" in self.roles:
            critic = mdl.load_critic(self.model_path, dtype, gc, trc)
            self.critic = eng.build_engine(critic, self.cfg, self.cfg.critic_lr, world_size,
                                           self.total_steps, self.cfg.critic_warmup_ratio)
        logger.info("learner rank %d/%d ready (%s, %s, ZeRO-%d)", rank, world_size,
                    "+".join(self.roles), self.cfg.engine, self.cfg.zero_stage)

    def _needs_ref(self) -> bool:
        return self.cfg.kl_coef > 0

    @staticmethod
    def _seed_all(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # ------------------------------------------------------------------ forward-only passes

    def _inputs(self, batch: TrajectoryBatch, idx: np.ndarray) -> tuple[mdl.ModelInputs, Tensor, Tensor]:
        """Model inputs, response ids and action mask of rows ``idx``, cut to their own
        longest prompt and response (a batch is padded to its longest sample; a micro-batch
        need not be). The response width ``t = response.shape[1]`` may be less than the
        batch's ``T``: per-token targets are taken with ``_take(rows, idx, t)``."""
        P = batch.prompt_ids.shape[1]
        p = int(batch.prompt_lengths[idx].max(initial=1))
        t = max(int(batch.response_lengths[idx].max(initial=1)), 1)
        response_ids = batch.response_ids[idx, :t]
        inputs = mdl.make_inputs(batch.prompt_ids[idx, P - p:], batch.prompt_lengths[idx], response_ids,
                                 batch.response_lengths[idx], self.device)
        response = torch.from_numpy(response_ids.astype(np.int64)).to(self.device)
        mask = torch.from_numpy(batch.action_mask[idx, :t].astype(np.float32)).to(self.device)
        return inputs, response, mask  # (b, p+t) inputs, (b, t) response and mask

    def _micro_chunks(self, idx: np.ndarray, batch: TrajectoryBatch | None = None,
                      size: int | None = None) -> list[np.ndarray]:
        """Micro-batches of ``idx`` (``size`` each, default ``micro_batch_size``) in order;
        given ``batch``, of similar lengths (less padding).

        Sorting is for updates only: their loss is a sum over the micro-batches of a
        mini-batch, so the order inside it does not change the step.
        """
        if batch is not None:
            idx = idx[np.argsort(batch.prompt_lengths[idx] + batch.response_lengths[idx], kind="stable")]
        size = size or self.cfg.micro_batch_size
        return [idx[i:i + size] for i in range(0, len(idx), size)]

    @torch.no_grad()
    def compute(self, batch: TrajectoryBatch, lo: int | None = None, hi: int | None = None,
                values_only: bool = False) -> dict[str, np.ndarray]:
        """old_logprobs, ref_logprobs and/or values (each (hi-lo, T) float32) of a shard.

        Forward passes of ``logprob_micro_batch_size`` samples (default ``micro_batch_size``).
        Defaults to this rank's contiguous share of the batch. Under ZeRO-3 every rank
        must call this with shards of the same size (the forward passes gather weights).
        ``values_only`` skips the policy and reference passes (critic warmup, where the
        policy is still the reference and the update does not read its log-probs).
        """
        if lo is None or hi is None:
            lo, hi = rank_range(len(batch), self.rank, self.world_size)
        out: dict[str, list[Tensor]] = {}
        T = batch.response_ids.shape[1]
        for chunk in self._micro_chunks(np.arange(lo, hi), size=self.cfg.logprob_micro_batch_size):
            inputs, response, _ = self._inputs(batch, chunk)
            pad = (0, T - response.shape[1])  # back to the batch's width
            if self.policy is not None and not values_only:
                self.policy.module.eval()
                logp, _ = mdl.policy_forward(self.policy, inputs, response, temperature=self.temperature)
                out.setdefault("old_logprobs", []).append(torch.nn.functional.pad(logp, pad))
            if self.ref is not None and not values_only:
                ref_logp, _ = mdl.policy_forward(self.ref, inputs, response, temperature=self.temperature)
                out.setdefault("ref_logprobs", []).append(torch.nn.functional.pad(ref_logp, pad))
            if self.critic is not None:
                self.critic.module.eval()
                values = mdl.critic_forward(self.critic, inputs, response.shape[1])
                out.setdefault("values", []).append(torch.nn.functional.pad(values, pad))
        mask = torch.from_numpy(batch.action_mask[lo:hi].astype(np.float32))
        return {k: (torch.cat(v).cpu() * mask).numpy() for k, v in out.items()}

    # ------------------------------------------------------------------ PPO update

    def ppo_update(self, batch: TrajectoryBatch, targets: PPOBatch, update_policy: bool = True
                   ) -> dict[str, float]:
        """``ppo_epochs`` passes over the batch, one optimizer step per mini-batch.

        Every rank takes its share of each mini-batch; losses are token means over the
        whole mini-batch's action tokens, so the step does not depend on the rank count.
        ``update_policy=False`` trains the critic alone (critic warmup).
        Returns update metrics averaged over mini-batches (token means summed over ranks).
        """
        hang_point("learner_update")
        totals: dict[str, float] = {}
        steps = 0
        for epoch in range(self.cfg.ppo_epochs):
            order_seed = mix_seed(self.seed, self.updates * 1_009 + epoch)
            for mb in minibatches(len(batch), self.cfg.mini_batch_size, order_seed):
                num_tokens = float(batch.action_mask[mb].sum())
                mine = shard_indices(mb, self.rank, self.world_size)
                sums = self._minibatch_step(batch, targets, mine, num_tokens, update_policy)
                self._count_nonfinite(sums)
                for key, value in sums.items():
                    totals[key] = totals.get(key, 0.0) + value
                steps += 1
        self.updates += 1
        metrics = {k: v / max(steps, 1) for k, v in totals.items()}
        metrics[SKIPPED_UPDATES] = totals.get(SKIPPED_UPDATES, 0.0)
        return self._reduce_over_ranks(metrics)

    def _count_nonfinite(self, sums: dict[str, float]) -> None:
        """Track skipped steps in a row; too many stop the run. A skipped step's non-finite
        numbers are left out of the update's means."""
        if not sums.get(SKIPPED_UPDATES):
            self.nonfinite_in_row = 0
            return
        self.nonfinite_in_row += 1
        for key in [k for k, v in sums.items() if not np.isfinite(v)]:
            del sums[key]
        logger.warning("learner: optimizer step skipped (non-finite loss or gradient norm), %d in a row",
                       self.nonfinite_in_row)
        if self.nonfinite_in_row >= self.cfg.max_nonfinite_updates:
            raise NonFiniteUpdates(
                f"{self.nonfinite_in_row} optimizer steps in a row had a non-finite loss or gradient norm "
                f"(learner.max_nonfinite_updates={self.cfg.max_nonfinite_updates}); none reached the weights. "
                "Lower the learning rates or check the rewards, then resume from the last checkpoint")

    def sft_update(self, batch: TrajectoryBatch) -> dict[str, float]:
        """One pass of supervised fine-tuning: cross-entropy on the action tokens only.

        The warm start of ``launch.sft`` (gold search trajectories); observation tokens
        carry no loss. One optimizer step per mini-batch, the loss a token mean over the
        whole mini-batch's action tokens, as in the PPO update.
        """
        if self.policy is None:
            raise RuntimeError("sft_update needs the policy role")
        totals = {SFT_LOSS: 0.0, GRAD_NORM: 0.0}
        batches = minibatches(len(batch), self.cfg.mini_batch_size, mix_seed(self.seed, self.updates))
        self.policy.module.train()
        for mb in batches:
            n = max(float(batch.action_mask[mb].sum()), 1.0)
            for chunk in self._micro_chunks(shard_indices(mb, self.rank, self.world_size), batch):
                inputs, response, mask = self._inputs(batch, chunk)
                logprobs, _ = mdl.policy_forward(self.policy, inputs, response)
                loss = -ppo.token_mean(logprobs, mask, n)
                self.policy.backward(loss)
                self.policy.step()
                totals[SFT_LOSS] += float(loss.detach())
            totals[GRAD_NORM] += self.policy.grad_norm()
        self.updates += 1
        metrics = {k: v / len(batches) for k, v in totals.items()}
        metrics[LR] = self.policy.lr()
        return self._reduce_over_ranks(metrics)

    def _minibatch_step(self, batch: TrajectoryBatch, targets: PPOBatch, idx: np.ndarray,
                        num_tokens: float, update_policy: bool = True) -> dict[str, float]:
        sums: dict[str, float] = {}
        n = max(num_tokens, 1.0)
        policy = self.policy if update_policy else None
        for chunk in self._micro_chunks(idx, batch):
            inputs, response, mask = self._inputs(batch, chunk)
            t = response.shape[1]
            parts: dict[str, Tensor] = {}
            if policy is not None:
                parts.update(self._policy_micro_step(inputs, response, mask, targets, chunk, n, batch))
            if self.critic is not None and targets.old_values is not None:
                self.critic.module.train()
                values = mdl.critic_forward(self.critic, inputs, t)  # (b, t)
                v_loss, v_clip = ppo.value_loss(values, self._take(targets.old_values, chunk, t),
                                                self._take(targets.returns, chunk, t),
                                                mask, self.cfg.value_clip, n)
                self.critic.backward(v_loss)
                self.critic.step()
                parts[ppo.VALUE_LOSS], parts[ppo.VALUE_CLIPFRAC] = v_loss.detach(), v_clip
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        if policy is not None:
            sums[GRAD_NORM], sums[LR] = policy.grad_norm(), policy.lr()
        if self.critic is not None:
            sums[CRITIC_GRAD_NORM] = self.critic.grad_norm()
        engines = [e for e in (policy, self.critic if targets.old_values is not None else None) if e is not None]
        sums[SKIPPED_UPDATES] = float(any(e.skipped() for e in engines))
        return sums

    def _policy_micro_step(self, inputs: mdl.ModelInputs, response: Tensor, mask: Tensor,
                           targets: PPOBatch, chunk: np.ndarray, n: float,
                           batch: TrajectoryBatch | None = None) -> dict[str, Tensor]:
        assert self.policy is not None
        self.policy.module.train()
        logprobs, entropy = mdl.policy_forward(self.policy, inputs, response, with_entropy=True,
                                               temperature=self.temperature)
        assert entropy is not None
        t = response.shape[1]
        ref = None if targets.ref_logprobs is None else self._take(targets.ref_logprobs, chunk, t)
        correction = self.cfg.off_policy_correction
        behaviour = None  # the sampling policy's log-probs, for tis/decoupled only
        if correction != "none" and batch is not None:
            behaviour = self._take(batch.rollout_logprobs, chunk, t)
        loss, parts = ppo.actor_loss(
            logprobs, self._take(targets.old_logprobs, chunk, t),
            self._take(targets.advantages, chunk, t), mask, entropy,
            clip_ratio=self.cfg.clip_ratio, dual_clip=self.cfg.dual_clip,
            entropy_coef=self.cfg.entropy_coef, ref_logprobs=ref,
            kl_loss_coef=self.cfg.kl_coef if self.cfg.use_kl_loss else 0.0, num_tokens=n,
            rollout_logprobs=behaviour, correction=correction,  # type: ignore[arg-type]
            is_cap=self.cfg.is_cap)
        self.policy.backward(loss)
        self.policy.step()
        return parts

    def _take(self, rows: np.ndarray, chunk: np.ndarray, width: int) -> Tensor:
        """Per-token targets of rows ``chunk``, cut to the micro-batch's response width."""
        return torch.from_numpy(np.ascontiguousarray(rows[chunk, :width])).to(self.device)

    def _reduce_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return metrics
        keys = sorted(k for k in metrics if k in _SUMMED)
        summed = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(summed)
        return {**metrics, **dict(zip(keys, summed.tolist(), strict=True))}

    # ------------------------------------------------------------------ weights and checkpoints

    def export_weights(self) -> dict[str, Tensor]:
        """The full policy state dict under Hugging Face names (ZeRO-3: all ranks call)."""
        if self.policy is None:
            raise RuntimeError("export_weights needs the policy role")
        hang_point("learner_export")
        return self.policy.full_state_dict()

    def weight_manifest(self) -> ws.Manifest:
        """The policy's tensors in buckets of ``learner.sync_bucket_mb`` (metadata only)."""
        if self.policy is None:
            raise RuntimeError("weight_manifest needs the policy role")
        return ws.plan_buckets(self.policy.module, self.cfg.sync_bucket_mb)

    def join_weight_group(self, world_size: int, host: str, port: int, store_path: str | None,
                          timeout_s: float) -> None:
        """Rank 0 only: form a new weight-update group with the engines, as its rank 0."""
        if self.rank != 0:
            raise RuntimeError(f"only learner rank 0 joins the weight-update group, not rank {self.rank}")
        self.leave_weight_group()
        self._weight_group = ws.WeightGroup(0, world_size, host, port, store_path, timeout_s, self.device)

    def leave_weight_group(self) -> None:
        if self._weight_group is not None:
            self._weight_group.close()
            self._weight_group = None

    def broadcast_weights(self, manifest: ws.Manifest) -> bool:
        """Send the policy to the weight-update group, bucket by bucket.

        Under ZeRO-3 every rank calls (the buckets are gathered together); otherwise rank 0
        alone. Only rank 0 sends. Returns False when the broadcast failed (an engine died
        or timed out); the group is then dropped so the engines still waiting fail at once.
        """
        if self.policy is None:
            raise RuntimeError("broadcast_weights needs the policy role")
        zero3 = self.cfg.engine == "deepspeed" and self.cfg.zero_stage == 3
        group = self._weight_group if self.rank == 0 else None
        watch = ws.Stopwatch()
        ok = ws.send_buckets(group, self.policy.module, manifest, zero3, watch)
        self._weight_sync_seconds = watch.seconds
        if self.rank == 0 and not ok:
            self.leave_weight_group()
        return ok

    def weight_sync_seconds(self) -> dict[str, float]:
        """Seconds per phase (gather, pack, broadcast, release) of this rank's last broadcast."""
        return dict(self._weight_sync_seconds)

    def critic_state(self) -> dict[str, Tensor]:
        """The full critic state dict (backbone + value head)."""
        if self.critic is None:
            raise RuntimeError("critic_state needs the critic role")
        return self.critic.full_state_dict()

    def save_checkpoint(self, directory: str) -> None:
        """Engines (model, optimizer, scheduler), per-rank RNG state, and on rank 0 a
        Hugging Face export of the policy under ``directory/hf``. All ranks call."""
        hang_point("learner_checkpoint")
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        if self.policy is not None:
            self.policy.save(str(root / "policy"))
            weights = self.export_weights()
            if self.rank == 0:
                self._save_hf(root / "hf", weights)
        if self.critic is not None:
            self.critic.save(str(root / "critic"))
        rng = {"python": random.getstate(), "numpy": np.random.get_state(),
               "torch": torch.get_rng_state(), "updates": self.updates}
        torch.save(rng, root / self._rng_file())

    def load_checkpoint(self, directory: str) -> None:
        """Restore what ``save_checkpoint`` wrote (same rank count)."""
        root = Path(directory)
        if self.policy is not None:
            self.policy.load(str(root / "policy"))
        if self.critic is not None:
            self.critic.load(str(root / "critic"))
        rng = torch.load(root / self._rng_file(), weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.updates = int(rng["updates"])

    def _rng_file(self) -> str:
        return f"rng_{'_'.join(self.roles)}_rank{self.rank}.pt"

    def _save_hf(self, out: Path, weights: dict[str, Tensor]) -> None:
        assert self.policy is not None
        hf_model: Any = self.policy.module
        hf_model.save_pretrained(str(out), state_dict=weights)
        # Tokenizer and generation files travel with the weights (vLLM loads the folder).
        for src in Path(self.model_path).iterdir():
            if src.is_file() and not (out / src.name).exists() and not _is_weight_file(src.name):
                shutil.copy2(src, out / src.name)

    def parameters_vector(self, role: str = "policy") -> np.ndarray:
        """All parameters of one model, flattened in name order (tests compare ranks)."""
        state = self.export_weights() if role == "policy" else self.critic_state()
        return torch.cat([state[k].float().flatten() for k in sorted(state)]).numpy()


def _is_weight_file(name: str) -> bool:
    return name.endswith((".safetensors", ".bin", ".pt", ".index.json"))

