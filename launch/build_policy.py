"""Build (or find) the policy for a prepared dataset and let it generate once.

    python -m launch.build_policy                       # tiny policy for data/toyworld, vLLM
    python -m launch.build_policy rollout.engine=hf     # same, transformers generate
    python -m launch.build_policy model=qwen2.5-3b      # a real model path: only generates

The tiny policy's tokenizer is trained on the prepared corpus and questions, so run
``launch.prepare_data`` first. Prints the model directory and a sampled completion of
the first validation prompt (gibberish for an untrained policy: it proves the model
loads and generates in the configured engine).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from launch.cli import run_tool
from workers.config import Config
from workers.data.prompt import encode_chat_prompt
from workers.data.rows import read_rows
from workers.policy import resolve_policy_path
from workers.rollout import SamplingSettings, make_engine


def main(cfg: Config) -> int:
    """Resolve the policy and sample one completion."""
    data_dir = Path(cfg.data.output_dir)
    try:
        path = resolve_policy_path(cfg.model, data_dir, cfg.data.format)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"policy: {path}")
    split = next((s for s in ("validation", "test", "train") if (data_dir / f"{s}.{cfg.data.format}").exists()), None)
    if split is None:
        print(f"error: no prepared rows in {data_dir}", file=sys.stderr)
        return 1
    row = read_rows(data_dir / f"{split}.{cfg.data.format}")[0]
    started = time.perf_counter()
    engine = make_engine(cfg.rollout.engine, path, dtype=cfg.model.dtype, seed=cfg.seed,
                         gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                         kv_cache_gib=cfg.rollout.kv_cache_gib,
                         max_model_len=cfg.rollout.max_prompt_tokens + cfg.rollout.max_response_tokens)
    loaded = time.perf_counter()
    tokenizer = engine.tokenizer  # type: ignore[attr-defined]
    prompt_ids = encode_chat_prompt(tokenizer, row.prompt)
    settings = SamplingSettings(max_tokens=cfg.rollout.max_action_tokens, temperature=cfg.rollout.temperature,
                                seed=cfg.seed, stop=("</search>", "</answer>"))
    gen = engine.generate([prompt_ids], settings)[0]
    done = time.perf_counter()
    print(f"engine: {cfg.rollout.engine} (load {loaded - started:.1f} s, generate {done - loaded:.2f} s)")
    print(f"question: {row.question}")
    print(f"sampled {len(gen.token_ids)} tokens ({gen.finish_reason}), mean log-prob "
          f"{sum(gen.logprobs) / max(1, len(gen.logprobs)):.2f}: {tokenizer.decode(list(gen.token_ids))!r}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, usage=__doc__ or ""))
