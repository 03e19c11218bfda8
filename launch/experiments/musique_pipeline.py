"""Real data end to end: MuSiQue -> rows and corpus -> index -> SFT -> StePPO -> evaluate.

    python -m launch.experiments.musique_pipeline input=../shared/data/musique_train100.json
    python -m launch.experiments.musique_pipeline input=musique_ans_v1.0_train.jsonl \\
        work_dir=runs/musique sft_epochs=2 train_steps=50 model=qwen2.5-3b ...

Runs, as subprocesses, exactly the commands a user types (each is printed first), so any
stage can be rerun or replaced by hand:

1. ``launch.prepare_data data=musique``: rows split into train/validation/test, and the
   corpus of every paragraph the rows carry;
2. ``launch.build_index``: the dense index of that corpus (manifest-checked when loaded);
3. ``launch.sft``: gold-trajectory warm start of the policy (the tiny one unless ``model=``);
4. ``launch.train``: StePPO from the SFT policy;
5. ``launch.evaluate`` on the test split, for the SFT policy and for the StePPO policy.

Tool arguments (every other key=value is a Hydra override given to every stage):
  input=FILE        MuSiQue-Ans official JSON or JSONL (required)
  work_dir=DIR      where everything goes (default: runs/musique-<time>)
  sft_epochs=X      SFT passes over the training rows (default: 2)
  train_steps=N     StePPO steps (default: 4)
  limit=N           test questions to evaluate (default: all)

Writes ``<work_dir>/musique_pipeline.json`` with every stage's numbers and wall time.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launch.cli import split_tool_args
from launch.evaluate import metrics_file

_NOISE = re.compile(r"^(\x1b\[[0-9;]*m)?\(\w+ pid=\d+|\bINFO\b|WARNING|Warning|Triton|^  (if|wrapper) |^\s*$|"
                    r"^ModuleNotFoundError|^Loading weights")
"""Lines not echoed: actors' output (Ray prefixes ``(ClassName pid=N)``), log records and
warnings of the libraries; the stage logs keep everything."""
TOOL_ARGS = ("input", "work_dir", "sft_epochs", "train_steps", "limit")
DEFAULTS = ("trainer=tiny", "rollout.max_response_tokens=1280")
"""Overrides applied unless given: the bare trainer preset (the quick start's is for toyworld),
and, since Wikipedia paragraphs are long, more room for 3-4 searches than the toyworld budget
(gold trajectories that do not fit are not taught)."""


class StageError(RuntimeError):
    """A stage's command failed; its output has already been shown."""


def run_stage(name: str, module: str, args: list[str], log: Path) -> float:
    """Run ``python -m module args``, teeing its output to ``log``; returns the wall time."""
    command = [sys.executable, "-m", module, *args]
    print(f"\n=== {name}\n$ {shlex.join(['python', '-m', module, *args])}", flush=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if not _NOISE.search(line):  # library and actor chatter stays in the log
                sys.stdout.write(line)
        code = proc.wait()
    if code != 0:
        raise StageError(f"{name} failed with exit code {code}; its output is in {log}")
    return time.perf_counter() - started


def pipeline(args: dict[str, str], overrides: list[str]) -> dict[str, Any]:
    """Every stage in order; returns the results also written to ``musique_pipeline.json``."""
    if "input" not in args:
        raise StageError("input=FILE is required: a MuSiQue-Ans official JSON or JSONL file")
    source = Path(args["input"])
    if not source.is_file():
        raise StageError(f"input: no such file: {source}")
    work = Path(args.get("work_dir") or f"runs/musique-{time.strftime('%Y%m%d-%H%M%S')}")
    work.mkdir(parents=True, exist_ok=True)
    data, index = work / "data", work / "index"
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    overrides = [d for d in DEFAULTS if d.split("=", 1)[0] not in given] + overrides
    common = ["data=musique", f"data.input_path={source}", f"data.output_dir={data}",
              f"retrieval.index_dir={index}", *overrides]
    walls: dict[str, float] = {}
    walls["prepare"] = run_stage("convert MuSiQue", "launch.prepare_data", common, work / "prepare.log")
    walls["index"] = run_stage("build the index", "launch.build_index",
                               [*common, f"retrieval.corpus_path={data / 'corpus.jsonl'}"], work / "index.log")
    sft_dir, train_dir = work / "sft", work / "steppo"
    walls["sft"] = run_stage("SFT warm start", "launch.sft",
                             [*common, f"sft.epochs={args.get('sft_epochs', '2')}", f"trainer.run_dir={sft_dir}"],
                             work / "sft.log")
    sft = json.loads((sft_dir / "summary.json").read_text())
    walls["steppo"] = run_stage("StePPO", "launch.train",
                                [*common, f"model.path={sft['policy']}",
                                 f"trainer.total_steps={args.get('train_steps', '4')}",
                                 f"trainer.run_dir={train_dir}"], work / "steppo.log")
    trained = json.loads((train_dir / "summary.json").read_text())
    limit = [f"limit={args['limit']}"] if "limit" in args else []
    evals = {}
    for name, policy in (("sft", sft["policy"]), ("steppo", str(Path(trained["checkpoint"]) / "learner" / "hf"))):
        output = work / f"predictions-test-{name}.jsonl"
        walls[f"evaluate_{name}"] = run_stage(f"evaluate the {name} policy on the test split", "launch.evaluate",
                                              [*common, f"checkpoint={policy}", f"output={output}", *limit],
                                              work / f"evaluate-{name}.log")
        evals[name] = json.loads(metrics_file(output).read_text())
    prepared = json.loads((data / "summary.json").read_text())
    results = {"input": str(source), "rows": prepared["rows"], "corpus_passages": prepared["corpus_passages"],
               "sft": {"steps": sft["steps"], "validation": sft["eval"], "test": evals["sft"]},
               "steppo": {"steps": trained["steps"], "validation": trained["eval"], "test": evals["steppo"]},
               "wall_s": walls, "work_dir": str(work)}
    (work / "musique_pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n=== results (test split)")
    for name in ("sft", "steppo"):
        t = evals[name]
        print(f"{name:<7} EM {t['eval/em']:.3f}  F1 {t['eval/f1']:.3f}  searches {t['eval/searches']:.2f}  "
              f"gold-hit {t['eval/gold_hit']:.3f}  format {t['eval/format_ok']:.3f}  ({t['questions']} questions)")
    print(f"total {sum(walls.values()):.0f} s; everything in {work}, numbers in {work / 'musique_pipeline.json'}")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    args, overrides = split_tool_args(argv, TOOL_ARGS)
    try:
        pipeline(args, overrides)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
