"""Probe: does a tiny policy learn to copy names into its first search, or memorise them?

The copy skill (putting the question's entity into the query) is what a warm start needs
before RL has anything to reinforce (docs/learning.md). This probe isolates it: a tiny
policy from random weights is trained on one thing only, the prompt -> the first gold
search ``<search> key </search>``, with a plain PyTorch loop (AdamW, the ``sft`` learning
rate and warmup, batch 16, loss on the search tokens), and every ``--eval-every`` steps it
writes greedy first searches for validation questions, whose entities it never saw asked
about. Arms differ in the tokenizer's vocabulary and in renaming:

- ``none``: the training questions as they are;
- ``pool``: every training example's entities take other names of the world, drawn anew
  each time (``sft.rename_entities``, ``workers.data.renaming.Renaming``).

All arms run one after the other in this process on the same data; the table at the end
gives exact-match rate of the first search on validation per arm and step, and the final
training loss.

    python -m benchmarks.copy_probe                                  # 3 arms of 600 steps, ~17 min here
    python -m benchmarks.copy_probe --arms 5000:pool --steps 600     # one arm
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from workers.data.rows import QARow

DEFAULT_DATA = "data/toyworld_learning"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=DEFAULT_DATA,
                   help="a prepared toyworld (python -m launch.prepare_data +experiment=toyworld_learning)")
    p.add_argument("--arms", nargs="+", default=["3000:none", "5000:none", "5000:pool"],
                   help="VOCAB:RENAMING pairs, RENAMING one of none, pool")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-size", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for arm in args.arms:
        vocab, _, renaming = arm.partition(":")
        if not vocab.isdigit() or renaming not in ("none", "pool"):
            p.error(f"--arms: {arm!r} is not VOCAB:none or VOCAB:pool")
    if not (Path(args.data_dir) / "train.parquet").exists():
        p.error(f"--data-dir: no train.parquet in {args.data_dir}; prepare it with "
                "python -m launch.prepare_data +experiment=toyworld_learning")
    return args


def _prompt_ids(tokenizer: Any, row: QARow) -> list[int]:
    from workers.data.prompt import encode_chat_prompt

    return encode_chat_prompt(tokenizer, row.prompt)


def run_arm(vocab: int, renaming: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.config import TinyModelConfig
    from workers.data.renaming import Renaming
    from workers.data.rows import read_rows
    from workers.policy.resolve import policy_texts
    from workers.policy.tiny import build_tiny_policy
    from workers.rollout.gold import gold_queries
    from workers.sft import name_pool

    data_dir = Path(args.data_dir)
    path = build_tiny_policy(TinyModelConfig(vocab_size=vocab, seed=args.seed), policy_texts(data_dir),
                             workdir / f"tiny-{vocab}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    train = read_rows(data_dir / "train.parquet")
    val = read_rows(data_dir / "validation.parquet")[: args.eval_size]
    pool = name_pool(data_dir, train) if renaming == "pool" else None
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    stop = tokenizer.convert_tokens_to_ids("</search>")

    def example(row: QARow) -> tuple[list[int], list[int]]:
        if pool is not None:
            row = Renaming.draw(row, pool, rng).row(row)
        return _prompt_ids(tokenizer, row), tokenizer(f"<search> {gold_queries(row)[0]} </search>")["input_ids"]

    def exact_first_search() -> float:
        model.eval()
        hits = 0
        for row in val:
            ids = _prompt_ids(tokenizer, row)
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                     eos_token_id=[stop], pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0][len(ids):]).replace("<search>", "").replace("</search>", "")
            hits += text.strip() == gold_queries(row)[0]
        model.train()
        return hits / max(len(val), 1)

    curve: list[tuple[int, float]] = []
    loss_value, tokens, start = float("nan"), 0, time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = [example(train[i]) for i in rng.sample(range(len(train)), 16)]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, (prompt, action) in enumerate(batch):
            n = len(prompt) + len(action)
            ids[i, :n] = torch.tensor(prompt + action)
            mask[i, :n] = 1
            labels[i, len(prompt):n] = torch.tensor(action)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        warmup.step()
        opt.zero_grad()
        loss_value, tokens = float(loss.detach()), tokens + int(mask.sum())
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, exact_first_search()))
            print(f"  vocab {vocab}, renaming {renaming}: step {step}, loss {loss_value:.3f}, "
                  f"first search exact on validation {curve[-1][1]:.3f} "
                  f"({tokens / (time.perf_counter() - start):.0f} tokens/s)", flush=True)
    return {"arm": f"{vocab}:{renaming}", "curve": curve, "loss": loss_value,
            "wall_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="copy-probe-") as tmp:
        for arm in args.arms:
            vocab, _, renaming = arm.partition(":")
            print(f"== arm {arm}", flush=True)
            results.append(run_arm(int(vocab), renaming, args, Path(tmp)))
    steps = [s for s, _ in results[0]["curve"]]
    print(f"\n== First search exact on {args.eval_size} validation questions, by training step ==")
    print(f"{'vocab:renaming':<16}" + "".join(f"{s:>8}" for s in steps) + f"{'train loss':>12}{'wall s':>8}")
    for r in results:
        print(f"{r['arm']:<16}" + "".join(f"{v:>8.3f}" for _, v in r["curve"]) + f"{r['loss']:>12.3f}"
              f"{r['wall_s']:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
