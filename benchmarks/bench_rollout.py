"""Benchmark: rollout throughput (1 vs 2 workers), vLLM vs HF generate, and in-place weight updates.

Runs in the driver (a local Ray cluster on loopback), in one retrieval actor, in rollout
actors and in vLLM engines started from this process, all on CPU. Prepares toyworld and
builds the tiny policy (the ``model=tiny`` preset) under ``--workdir`` (reused when it
exists), then measures side by side, same prompts and same seeds:

1. A vLLM ``RolloutGroup`` of 2 rollout actors, driven with both actors and with only the
   first (same engines, so only one set of engine starts is paid), in interleaved rounds:
   generated tokens/s and searches/s over the rollout's wall time, and the fraction of
   rollout time spent waiting for the retrieval actor (``rollout/search_wait_fraction``).
   The retrieval cache is cleared before every round, so each round pays for its searches.
2. An in-process ``RolloutWorker`` with the vLLM engine and one with the HF engine
   (interleaved rounds; HF is slow, so ``--hf-repeats`` defaults to 1): tokens/s, ratio.
3. ``VLLMEngine.update_weights`` (in place) against writing the same state dict with
   safetensors and loading it into a fresh HF model (``from_pretrained``), and the time to
   start a fresh vLLM engine on that model (what an engine restart costs): for the rollout
   policy and, with ``--big``, a ~100M-parameter Qwen2 with seeded random weights. The
   engine's log-probs of a fixed sequence are then compared with the HF model's, so a
   timed update that loaded nothing would show.

Medians over ``--repeats`` rounds are printed. A randomly initialised tiny policy rarely
writes a well-formed ``<search>``; pass ``--policy DIR`` (an SFT'd checkpoint, e.g. from
``python -m launch.sft``) to exercise the search path.

    python -m benchmarks.bench_rollout                     # 16 prompts, tiny policy
    python -m benchmarks.bench_rollout --big               # + the ~100M model in section 3
    python -m benchmarks.bench_rollout --policy runs/sft/checkpoints/step_000004/learner/hf
"""

from __future__ import annotations

import os

# Before ray or vllm is imported: a local cluster and vLLM bind to 127.0.0.1 (DESIGN.md 5).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import argparse
import copy
import gc
import hashlib
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.config import RetrievalConfig, RolloutConfig
from workers.data.rows import QARow
from workers.types import TrajectoryBatch

logger = logging.getLogger(__name__)

BIG_MODEL = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "num_key_value_heads": 12, "head_dim": 64, "intermediate_size": 2560}
"""~100M parameters with the tiny tokenizer's padded vocabulary (head_dim 64: DESIGN.md 5)."""


@dataclass(frozen=True)
class Round:
    """One timed rollout: counts from the returned batch, timings from this process."""

    wall_s: float
    tokens: int
    searches: int
    search_wait_fraction: float
    worker_tokens_per_s: float
    signature: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def searches_per_s(self) -> float:
        return self.searches / self.wall_s


def summarize(batch: TrajectoryBatch, wall_s: float, metrics: dict[str, float]) -> Round:
    """Generated tokens (action mask), searches, and a digest of the sampled tokens by sample id."""
    from workers.rollout.worker import ROLLOUT_SEARCH_WAIT_FRACTION, ROLLOUT_TOKENS_PER_S

    digest = hashlib.sha256()
    for i in sorted(range(len(batch)), key=lambda k: batch.sample_ids[k]):
        digest.update(batch.sample_ids[i].encode())
        digest.update(batch.response_ids[i, :int(batch.response_lengths[i])].tobytes())
    searches = sum(t.kind == "search" for turns in batch.turns for t in turns)
    return Round(wall_s, int(batch.action_mask.sum()), searches, metrics[ROLLOUT_SEARCH_WAIT_FRACTION],
                 metrics[ROLLOUT_TOKENS_PER_S], digest.hexdigest()[:12])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def prepare_inputs(workdir: Path, policy: str | None) -> tuple[Path, str]:
    """Toyworld (default sizes, so an SFT'd toyworld checkpoint fits) and the rollout policy."""
    from launch.prepare_data import prepare
    from workers.config import DataConfig, TinyModelConfig
    from workers.policy import ensure_tiny_policy, policy_texts

    data_dir = workdir / "toyworld"
    if not (data_dir / "train.parquet").exists():
        prepare(DataConfig(name="toyworld", output_dir=str(data_dir)))
    if policy is None:
        policy = str(ensure_tiny_policy(TinyModelConfig(), policy_texts(data_dir), workdir / "models"))
    return data_dir, policy


def build_big_model(tokenizer_dir: str, out_dir: Path) -> Path:
    """A ~100M-parameter Qwen2 with seeded random weights and the rollout policy's tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32", initializer_range=0.02,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **BIG_MODEL)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def rollout_config(args: argparse.Namespace, engine: str, num_workers: int) -> RolloutConfig:
    """The ``rollout=cpu`` preset with short actions, so a round takes seconds."""
    return RolloutConfig(engine=engine, num_workers=num_workers, num_cpus_per_worker=1.0, max_turns=3,
                         max_prompt_tokens=512, max_response_tokens=768, max_obs_tokens=256,
                         max_action_tokens=args.max_action_tokens, kv_cache_gib=1.0, temperature=1.0,
                         seed=args.seed)


def interleaved(runs: dict[str, Callable[[], Round]], repeats: dict[str, int], clear_cache: Callable[[], None]
                ) -> dict[str, list[Round]]:
    """``repeats[name]`` rounds of each run, alternating, so slow phases of a shared machine hit all."""
    out: dict[str, list[Round]] = {name: [] for name in runs}
    for r in range(max(repeats.values())):
        for name, run in runs.items():
            if r < repeats[name]:
                clear_cache()
                out[name].append(run())
                logger.info("round %d %s: %s", r, name, out[name][-1])
    return out


def group_runner(group: Any, rows: Sequence[QARow], seed: int) -> Callable[[], Round]:
    import ray

    def run() -> Round:
        started = time.perf_counter()
        batch = ray.get(group.rollout(rows, seed=seed))
        return summarize(batch, time.perf_counter() - started, group.metrics())
    return run


def worker_runner(worker: Any, rows: Sequence[QARow], seed: int) -> Callable[[], Round]:
    def run() -> Round:
        started = time.perf_counter()
        batch = worker.rollout(rows, seed=seed)
        return summarize(batch, time.perf_counter() - started, worker.metrics())
    return run


def close_group(group: Any) -> None:
    """Stop each actor's vLLM engine processes, then the actors."""
    group.shutdown()


def first_actors(group: Any, n: int) -> Any:
    """The same group handing chunks to its first ``n`` actors only.

    A shallow copy, not a second ``RolloutGroup``: a vLLM engine start costs a minute or more
    here, and the idle actor's engine takes no CPU while it waits.
    """
    view = copy.copy(group)
    view.actors = group.actors[:n]
    return view


def bench_workers(args: argparse.Namespace, policy: str, retrieval: Any, rows: Sequence[QARow]
                  ) -> tuple[dict[str, list[Round]], float]:
    """Section 1: one vLLM rollout group of 2 actors, driven with 1 and 2 of them, interleaved."""
    from actors.rollout import RolloutGroup

    started = time.perf_counter()
    group = RolloutGroup(rollout_config(args, "vllm", 2), policy, retrieval.search,
                         topk=args.topk, dtype="float32", chunk_size=args.chunk_size)
    start_s = time.perf_counter() - started
    try:
        # Warm-up: one chunk per actor with another seed (first calls allocate and compile).
        group_runner(group, rows[:2 * args.chunk_size], args.seed + 1000)()
        views = {"1 worker": first_actors(group, 1), "2 workers": group}
        runs = {name: group_runner(view, rows, args.seed) for name, view in views.items()}
        return interleaved(runs, dict.fromkeys(runs, args.repeats), retrieval.clear_cache), start_s
    finally:
        close_group(group)


def bench_engines(args: argparse.Namespace, policy: str, retrieval: Any, rows: Sequence[QARow]
                  ) -> tuple[dict[str, list[Round]], dict[str, float], Any]:
    """Section 2: in-process workers with each engine. Returns the vLLM worker (still open)."""
    from workers.rollout.worker import RolloutWorker

    workers: dict[str, Any] = {}
    starts: dict[str, float] = {}
    try:
        for engine in ("vllm", "hf"):
            started = time.perf_counter()
            workers[engine] = RolloutWorker(rollout_config(args, engine, 0), policy, retrieval.search,
                                            topk=args.topk, dtype="float32")
            starts[engine] = time.perf_counter() - started
            warmup = rows[:args.chunk_size] if engine == "vllm" else rows[:1]  # HF: no compile, just slow
            worker_runner(workers[engine], warmup, args.seed + 1000)()
        runs = {name: worker_runner(w, rows, args.seed) for name, w in workers.items()}
        rounds = interleaved(runs, {"vllm": args.repeats, "hf": args.hf_repeats}, retrieval.clear_cache)
    except BaseException:
        if "vllm" in workers:
            workers["vllm"].engine.close()
        raise
    return rounds, starts, workers["vllm"]


def perturbed_model(model_dir: str) -> tuple[dict[str, Any], int, list[int], list[float]]:
    """The model's weights plus seeded noise (a real change to load), its parameter count, and
    a fixed 48-token sequence with the perturbed model's log-prob of each token after the first."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        seq = [int(t) for t in torch.randint(5, model.config.vocab_size // 2, (48,))]
        logits = model(input_ids=torch.tensor([seq])).logits[0, :-1]
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
    return model.state_dict(), sum(p.numel() for p in model.parameters()), seq, expected.tolist()


def time_updates(engine: Any, state: dict[str, Any], repeats: int) -> float:
    """Median seconds of ``update_weights`` in place (the engine's file-through-/dev/shm path)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.update_weights(state.items())
        times.append(time.perf_counter() - started)
    return median(times)


def time_save_and_load(state: dict[str, Any], model_dir: str, out_dir: Path, repeats: int
                       ) -> tuple[float, float]:
    """Median seconds of a safetensors save of ``state`` and of one ``from_pretrained`` of it."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json"):
        if (Path(model_dir) / name).exists():
            shutil.copy(Path(model_dir) / name, out_dir / name)
    # safetensors refuses tensors that share storage: drop the tied lm_head, as save_pretrained does.
    tensors = {k: v.detach().contiguous() for k, v in state.items()
               if not (k == "lm_head.weight" and "model.embed_tokens.weight" in state
                       and v.data_ptr() == state["model.embed_tokens.weight"].data_ptr())}
    saves, loads = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        saves.append(time.perf_counter() - started)
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
        loads.append(time.perf_counter() - started)
        del model
        gc.collect()
    return median(saves), median(loads)


def bench_weights(args: argparse.Namespace, name: str, model_dir: str, engine: Any, start_s: float,
                  workdir: Path) -> tuple[Any, ...]:
    """Section 3, one model: a row of the weight-update table (closes ``engine``)."""
    try:
        state, n_params, seq, expected = perturbed_model(model_dir)
        update_s = time_updates(engine, state, args.repeats)
        (scored,) = engine.score([seq])
    finally:
        engine.close()
    max_diff = max(abs(a - b) for a, b in zip(scored, expected, strict=True))
    save_s, load_s = time_save_and_load(state, model_dir, workdir / f"reload-{name}", args.repeats)
    return (name, f"{n_params / 1e6:.1f}M", update_s, save_s, load_s, save_s + load_s,
            f"{update_s / (save_s + load_s):.2f}", f"{start_s:.1f}", f"{start_s / update_s:.0f}",
            f"{max_diff:.1e}")


def start_engine(model_dir: str) -> tuple[Any, float]:
    """A fresh vLLM engine on ``model_dir`` and the seconds it took to start."""
    from workers.rollout.engines import VLLMEngine

    started = time.perf_counter()
    engine = VLLMEngine(model_dir, dtype="float32", kv_cache_gib=1.0, max_model_len=1280)
    return engine, time.perf_counter() - started


def rollout_table(rounds: dict[str, list[Round]], label: str) -> str:
    from launch.report import table

    rows = []
    for name, rs in rounds.items():
        rows.append((name, len(rs), median([r.wall_s for r in rs]), rs[0].tokens,
                     f"{median([r.tokens_per_s for r in rs]):.1f}", rs[0].searches,
                     f"{median([r.searches_per_s for r in rs]):.2f}",
                     f"{100 * median([r.search_wait_fraction for r in rs]):.1f}%",
                     f"{median([r.worker_tokens_per_s for r in rs]):.1f}",
                     "yes" if len({r.signature for r in rs}) == 1 else "no"))
    header = (label, "rounds", "wall s", "tokens", "tokens/s", "searches", "searches/s", "search wait",
              "tokens/s per call", "same each round")
    return table(rows, header)


def ratio_line(rounds: dict[str, list[Round]], top: str, bottom: str) -> str:
    tps = {k: median([r.tokens_per_s for r in rs]) for k, rs in rounds.items()}
    sps = {k: median([r.searches_per_s for r in rs]) for k, rs in rounds.items()}
    line = f"ratio {top} / {bottom}: tokens/s {tps[top] / tps[bottom]:.2f}x"
    if sps[bottom] > 0:
        line += f", searches/s {sps[top] / sps[bottom]:.2f}x"
    return line


def no_search_note(rounds: dict[str, list[Round]]) -> str | None:
    if any(r.searches for rs in rounds.values() for r in rs):
        return None
    return ("note: the policy made no searches, so searches/s and the search-wait fraction measure "
            "nothing here; pass --policy DIR (an SFT'd checkpoint, e.g. from `python -m launch.sft`) "
            "to exercise the search path.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=16, help="training prompts per rollout round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per configuration (medians)")
    parser.add_argument("--hf-repeats", type=int, default=1, help="timed rounds of the (slow) HF engine")
    parser.add_argument("--max-action-tokens", type=int, default=32, help="longest single generation")
    parser.add_argument("--chunk-size", type=int, default=4, help="prompts per rollout-actor call")
    parser.add_argument("--topk", type=int, default=3, help="documents per search")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same for every round)")
    parser.add_argument("--policy", default=None, help="HF checkpoint to roll out (default: the tiny policy)")
    parser.add_argument("--big", action="store_true", help="also time weight updates of a ~100M Qwen2")
    parser.add_argument("--workdir", default=None, help="data, models and reload files (default: a temp dir)")
    return parser.parse_args(argv)


def report_workers(rounds: dict[str, list[Round]], group_start_s: float, n_rows: int) -> None:
    print(f"\n1. RolloutGroup (vllm), 1 vs 2 rollout actors, {n_rows} prompts, medians "
          f"(the group of 2 actors started in {group_start_s:.0f} s):")
    print(rollout_table(rounds, "workers"))
    print(ratio_line(rounds, "2 workers", "1 worker"))
    same = len({r.signature for rs in rounds.values() for r in rs}) == 1
    print(f"identical sampled tokens with 1 and 2 workers: {'yes' if same else 'no'} (seeded per chunk; "
          "a prompt found in an engine's prefix cache can change the last bits of a log-prob)")
    if note := no_search_note(rounds):
        print(note)


def report_engines(rounds: dict[str, list[Round]], starts: dict[str, float], n_rows: int) -> None:
    print(f"\n2. In-process RolloutWorker, vLLM vs HF engine, {n_rows} prompts, medians:")
    print(rollout_table(rounds, "engine"))
    print(ratio_line(rounds, "vllm", "hf"))
    print(f"engine start in this process: vllm {starts['vllm']:.1f} s, hf {starts['hf']:.2f} s")


def run_sections(args: argparse.Namespace, workdir: Path, data_dir: Path, policy: str,
                 timings: dict[str, float]) -> None:
    """The three measurements, printed as they finish; ``timings`` gets each one's wall time."""
    from actors.retrieval import RetrievalGroup
    from workers.data.rows import read_rows

    rows = read_rows(data_dir / "train.parquet")[:args.rows]
    mark = time.perf_counter()
    retrieval = RetrievalGroup(RetrievalConfig(corpus_path=str(data_dir / "corpus.jsonl"), topk=args.topk,
                                               num_cpus=0.5))
    try:
        retrieval.wait_ready()
        timings["retrieval index"] = time.perf_counter() - mark

        mark = time.perf_counter()
        worker_rounds, group_start_s = bench_workers(args, policy, retrieval, rows)
        timings["1: rollout workers"] = time.perf_counter() - mark
        report_workers(worker_rounds, group_start_s, len(rows))

        mark = time.perf_counter()
        engine_rounds, engine_starts, vllm_worker = bench_engines(args, policy, retrieval, rows)
        timings["2: vllm vs hf"] = time.perf_counter() - mark
        report_engines(engine_rounds, engine_starts, len(rows))
    finally:
        retrieval.shutdown()

    mark = time.perf_counter()
    name = "tiny" if args.policy is None else "policy"
    weight_rows = [bench_weights(args, name, policy, vllm_worker.engine, engine_starts["vllm"], workdir)]
    timings["3: weight updates"] = time.perf_counter() - mark
    if args.big:
        mark = time.perf_counter()
        big_dir = str(build_big_model(policy, workdir / "big-qwen2"))
        engine, start_s = start_engine(big_dir)
        weight_rows.append(bench_weights(args, "big", big_dir, engine, start_s, workdir))
        timings["3: big model (--big)"] = time.perf_counter() - mark
    print_weights(weight_rows, args.repeats)


def main(argv: list[str] | None = None) -> int:
    import ray
    from transformers.utils import logging as transformers_logging

    from actors.cluster import init_ray
    from workers.config import ClusterConfig

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    transformers_logging.disable_progress_bar()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-rollout-"))
    workdir.mkdir(parents=True, exist_ok=True)
    begun = time.perf_counter()
    data_dir, policy = prepare_inputs(workdir, args.policy)
    print(f"workdir {workdir}; policy {policy}; {args.rows} prompts, max_action_tokens "
          f"{args.max_action_tokens}, chunk size {args.chunk_size}, {args.repeats} rounds (medians); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    timings: dict[str, float] = {"data and policy": time.perf_counter() - begun}
    init_ray(ClusterConfig(num_cpus=4, loopback=True), logging_level="WARNING")
    try:
        run_sections(args, workdir, data_dir, policy, timings)
    finally:
        ray.shutdown()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    timings["total"] = time.perf_counter() - begun
    print("\nwall time by section: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print("(a shared machine: other jobs disturb these timings; compare ratios, rerun before trusting one)")
    return 0


def print_weights(weight_rows: list[tuple[Any, ...]], repeats: int) -> None:
    from launch.report import table

    print(f"\n3. Weight updates, fp32, medians of {repeats}:")
    print(table(weight_rows, ("model", "params", "update_weights s", "safetensors save s",
                              "from_pretrained s", "save+load s", "update / (save+load)",
                              "fresh engine start s", "start / update", "max |dlogprob| vs HF")))
    print("update_weights: VLLMEngine in place (safetensors in /dev/shm + reload_weights in the engine).\n"
          "save+load: the same state dict written to --workdir with safetensors, then from_pretrained into a\n"
          "fresh HF model (safetensors are memory-mapped, and the file was just written, so it is in the page\n"
          "cache). fresh engine start: a new VLLMEngine on the model (what a restart costs).\n"
          "max |dlogprob|: the engine's log-probs of a fixed sequence after the updates vs the updated HF model.")


if __name__ == "__main__":
    sys.exit(main())
