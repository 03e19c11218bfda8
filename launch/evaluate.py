"""Evaluate a policy greedily on a prepared split: EM, F1, cover-EM and search quality.

    python -m launch.evaluate checkpoint=DIR                        # test split, vLLM
    python -m launch.evaluate checkpoint=DIR split=validation limit=100 rollout.engine=hf
    python -m launch.evaluate                                       # the model config's policy
    python -m launch.evaluate checkpoint=DIR rollout.num_workers=2  # two rollout actors on Ray
    python -m launch.evaluate checkpoint=DIR eval_sets=[hotpotqa,2wiki,musique,bamboogle] \
        retrieval.index_dir=indexes/wiki18-e5 limit=500          # the paper's table

Tool arguments (top-level keys; every other key=value is a Hydra override):
  checkpoint=DIR   Hugging Face model directory, a training checkpoint (its learner/hf) or a
                   run directory (its newest checkpoint); default: model.path, or the tiny
                   policy built for data.output_dir
  split=NAME       rows from <data.output_dir>/NAME.<data.format> (default: test)
  limit=N          only the first N rows
  output=FILE      predictions JSONL (default: <checkpoint or trainer.run_dir>/predictions-<split>.jsonl)
  batch_size=N     rows per rollout call and progress step (default: 16)
  eval_sets=[A,B]  several prepared sets (directories or data presets, each optionally
                   @CORPUS_OR_INDEX) scored in one call: one table with a row per set and
                   their average, written as eval-sets-<split>.{json,md} beside the
                   predictions (output=DIR, default the checkpoint); limit=N is per set

Runs in the user's process: one RolloutWorker (engine from rollout.engine) and an
in-process retriever over retrieval.index_dir or retrieval.corpus_path (default:
<data.output_dir>/corpus.jsonl). Giving rollout.num_workers=N (N > 0) on the command line
runs N rollout actors and retrieval.num_replicas retrieval actors on Ray instead.
Prints a table per data source and writes one JSON line per question with its
prediction, scores and full trajectory.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from launch.cli import run_tool, split_tool_args
from workers.config import Config, ConfigError, RetrievalConfig
from workers.data.problems import DataError
from workers.data.rows import QARow, read_rows
from workers.evaluation import (
    EVAL_COUNT,
    EVAL_COVER_EM,
    EVAL_EM,
    EVAL_EMPTY_ANSWER,
    EVAL_F1,
    EVAL_FORMAT_OK,
    EVAL_GOLD_HIT,
    EVAL_REDUNDANCY,
    EVAL_SEARCHES,
    EvalRecord,
    EvalResult,
    summarize,
)
from workers.policy import resolve_policy_path

logger = logging.getLogger(__name__)

TOOL_ARGS = ("checkpoint", "split", "limit", "output", "batch_size", "eval_sets")
"""Top-level keys this tool takes besides the Hydra overrides."""


@dataclass(frozen=True)
class EvalArgs:
    """The tool arguments, checked."""

    checkpoint: str | None = None
    split: str = "test"
    limit: int | None = None
    output: str | None = None
    batch_size: int = 16
    eval_sets: tuple[str, ...] = ()
    """Several sets in one call (launch.eval_sets); empty: data.output_dir alone."""


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(name, f"must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")
    return number


def parse_eval_args(tool_args: dict[str, str]) -> EvalArgs:
    """Type and check ``split_tool_args``' output; raise ``ConfigError`` naming the key."""
    split = tool_args.get("split", "test")
    if not split or "/" in split:
        raise ConfigError("split", f"must be a split name such as test or validation, got {split!r}")
    return EvalArgs(
        checkpoint=tool_args.get("checkpoint") or None, split=split,
        limit=_positive_int("limit", tool_args["limit"]) if "limit" in tool_args else None,
        output=tool_args.get("output") or None,
        batch_size=_positive_int("batch_size", tool_args["batch_size"]) if "batch_size" in tool_args else 16,
        eval_sets=_set_list(tool_args["eval_sets"]) if "eval_sets" in tool_args else ())


def _set_list(value: str) -> tuple[str, ...]:
    from launch.eval_sets import parse_set_list

    return parse_set_list(value)


def find_hf_model(path: Path) -> Path | None:
    """The Hugging Face model folder ``path`` names: itself, the policy export of a training
    checkpoint (``learner/hf``), or that of a run directory's newest complete checkpoint."""
    from workers.tracking import latest_checkpoint

    latest = latest_checkpoint(path)
    places = [path, path / "hf", path / "learner" / "hf"]
    if latest is not None:
        places.append(latest / "learner" / "hf")
    return next((p for p in places if (p / "config.json").is_file()), None)


def resolve_model(cfg: Config, checkpoint: str | None) -> str:
    """The checkpoint's model folder, or the model config's policy (the tiny one is built on demand)."""
    if checkpoint is None:
        return resolve_policy_path(cfg.model, cfg.data.output_dir, cfg.data.format)
    found = find_hf_model(Path(checkpoint))
    if found is None:
        raise ConfigError("checkpoint", f"{checkpoint} holds no Hugging Face model (config.json), "
                          "neither directly nor as a training checkpoint's learner/hf")
    return str(found)


def retrieval_config(cfg: Config) -> RetrievalConfig:
    """``cfg.retrieval`` with the prepared data's corpus as the default corpus; fails fast
    (``ConfigError``) when there is neither a built index nor the corpus to build one."""
    from retrieval_service.index import MANIFEST_FILE

    rcfg = cfg.retrieval
    if not rcfg.corpus_path:
        rcfg = replace(rcfg, corpus_path=str(Path(cfg.data.output_dir) / "corpus.jsonl"))
    built = bool(rcfg.index_dir) and (Path(str(rcfg.index_dir)) / MANIFEST_FILE).is_file()
    if not built and not Path(str(rcfg.corpus_path)).is_file():
        raise ConfigError("retrieval.corpus_path", f"{rcfg.corpus_path} not found: run launch.prepare_data "
                          "for data.output_dir, or set retrieval.corpus_path or retrieval.index_dir")
    return rcfg


@contextmanager
def eval_session(cfg: Config, model_path: str, use_ray: bool = False, batch_size: int = 16) -> Iterator[Any]:
    """An ``actors.session.Session`` with its rollout started over ``retrieval_config(cfg)``:
    a retriever and a ``RolloutWorker`` in this process, or with ``use_ray``
    ``rollout.num_workers`` rollout actors and ``retrieval.num_replicas`` retrieval actors.
    Everything it started is stopped at the end (Ray too, when it was used)."""
    from actors.session import Session

    cfg = replace(cfg, retrieval=retrieval_config(cfg))
    if use_ray:
        from actors.cluster import init_ray

        init_ray(cfg.cluster, quiet=not cfg.trainer.verbose)
    chunk = max(1, math.ceil(batch_size / max(1, cfg.rollout.num_workers)))
    session = Session(cfg, model_path, in_process=not use_ray, chunk_size=chunk)
    try:
        session.start_rollout()
        yield session
    finally:
        session.stop()
        if use_ray:
            import ray

            ray.shutdown()


def wants_ray(overrides: Sequence[str], cfg: Config) -> bool:
    """Ray only when the command line itself asks for rollout actors (presets do not count).

    >>> wants_ray(["rollout.num_workers=2"], Config()), wants_ray([], Config())
    (True, False)
    """
    given = any(o.lstrip("+").startswith("rollout.num_workers=") for o in overrides)
    return given and cfg.rollout.num_workers > 0


def default_output(cfg: Config, args: EvalArgs) -> Path:
    """``output=``, else ``predictions-<split>.jsonl`` in the checkpoint or the run directory."""
    if args.output:
        return Path(args.output)
    return Path(args.checkpoint or cfg.trainer.run_dir) / f"predictions-{args.split}.jsonl"


def chunks(rows: Sequence[QARow], size: int) -> Iterator[list[QARow]]:
    for start in range(0, len(rows), size):
        yield list(rows[start:start + size])


def evaluate_rows(session: Any, rows: Sequence[QARow], batch_size: int, output: Path,
                  desc: str = "evaluate") -> EvalResult:
    """Roll out ``rows`` chunk by chunk, writing each chunk's predictions as it finishes;
    ``desc`` labels the progress bar."""
    from tqdm import tqdm

    records: list[EvalRecord] = []
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as fh, tqdm(total=len(rows), unit="q", desc=desc) as bar:
        for chunk in chunks(rows, batch_size):
            result = session.evaluate(chunk, decode=True)
            for record in result.records:
                fh.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            fh.flush()
            records.extend(result.records)
            bar.update(len(chunk))
    return summarize(records)


COLUMNS = (("EM", EVAL_EM), ("F1", EVAL_F1), ("cover-EM", EVAL_COVER_EM), ("searches", EVAL_SEARCHES),
           ("gold-hit", EVAL_GOLD_HIT), ("redundancy", EVAL_REDUNDANCY), ("format", EVAL_FORMAT_OK),
           ("empty", EVAL_EMPTY_ANSWER))


def format_table(result: EvalResult) -> str:
    """One line per data source, one per hop count (when the rows say it), and one for all,
    e.g. ``toyworld  20  0.150  0.210 ...``, ``3-hop  8  0.125 ...``."""
    rows = [*result.by_source.items(), *((f"{h}-hop", v) for h, v in result.by_hops.items()),
            ("all", result.overall)]
    width = max(len("source"), *(len(name) for name, _ in rows))
    lines = [f"{'source':<{width}} {'n':>5} " + " ".join(f"{title:>10}" for title, _ in COLUMNS)]
    for name, values in rows:
        cells = " ".join(f"{values[key]:>10.3f}" for _, key in COLUMNS)
        lines.append(f"{name:<{width}} {int(values[EVAL_COUNT]):>5} {cells}")
    return "\n".join(lines)


def load_split(cfg: Config, args: EvalArgs) -> list[QARow]:
    rows = read_rows(Path(cfg.data.output_dir) / f"{args.split}.{cfg.data.format}")
    return rows[: args.limit] if args.limit is not None else rows


def evaluate(cfg: Config, args: EvalArgs, use_ray: bool = False) -> int:
    """Evaluate, print the table and the predictions path; 1 on missing data or policy."""
    if args.eval_sets:
        from launch.eval_sets import evaluate_sets

        try:
            return evaluate_sets(cfg, args, use_ray)
        except (DataError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        model_path = resolve_model(cfg, args.checkpoint)
        rows = load_split(cfg, args)
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    output = default_output(cfg, args)
    with eval_session(cfg, model_path, use_ray, args.batch_size) as session:
        result = evaluate_rows(session, rows, args.batch_size, output)
    metrics_path = metrics_file(output)
    metrics_path.write_text(json.dumps({"policy": model_path, "split": args.split, "questions": len(rows),
                                        **result.overall}, indent=2) + "\n")
    print(f"policy: {model_path}")
    print(f"split: {args.split} ({len(rows)} questions, greedy, engine {cfg.rollout.engine})")
    print(format_table(result))
    print(f"predictions: {output}\nmetrics:     {metrics_path}")
    return 0


def metrics_file(predictions: Path) -> Path:
    """Where the overall numbers go: ``predictions-test.jsonl`` -> ``predictions-test.metrics.json``."""
    return predictions.with_name(predictions.stem + ".metrics.json")


def cli(argv: Sequence[str] | None = None) -> int:
    """Split the tool arguments from the overrides and run."""
    tool_args, overrides = split_tool_args(sys.argv[1:] if argv is None else argv, TOOL_ARGS)

    def main(cfg: Config) -> int:
        return evaluate(cfg, parse_eval_args(tool_args), use_ray=wants_ray(overrides, cfg))

    return run_tool(main, overrides, usage=__doc__ or "")


if __name__ == "__main__":
    sys.exit(cli())
