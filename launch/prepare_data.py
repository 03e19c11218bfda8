"""Prepare a dataset: StepSearch rows per split and the corpus.

    python -m launch.prepare_data data=toyworld
    python -m launch.prepare_data data=musique data.input_path=FILE data.output_dir=DIR
    python -m launch.prepare_data data=hotpotqa data.input_path=FILE data.output_dir=DIR
    python -m launch.prepare_data data=2wiki data.input_path=dev.json data.split=test
    python -m launch.prepare_data data=bamboogle data.input_path=bamboogle/test.jsonl
    python -m launch.prepare_data data=flashrag data.name=popqa data.input_path=popqa/test.jsonl

Writes ``DIR/{train,validation,test}.parquet`` (or ``.jsonl`` with ``data.format=jsonl``),
``DIR/corpus.jsonl`` (not for FlashRAG sets, which ship no corpus) and ``DIR/summary.json``,
and prints the counts. Bad source records
are reported with file, line (or record index) and reason, dropped, and counted.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from launch.cli import run_tool
from workers.config import Config, ConfigError, DataConfig
from workers.config.checks import data_converter
from workers.data.corpus import write_corpus_jsonl
from workers.data.flashrag import convert_flashrag
from workers.data.hotpotqa import convert_hotpotqa
from workers.data.musique import Converted, convert_musique
from workers.data.problems import DataError, ProblemLog
from workers.data.prompt import INSTRUCTIONS, build_prompt
from workers.data.rows import SPLITS, write_rows
from workers.data.sources import iter_json_records
from workers.data.toyworld import generate
from workers.data.twowiki import convert_twowiki

logger = logging.getLogger(__name__)


def convert(cfg: DataConfig) -> Converted:
    """Rows and passages of the configured dataset."""
    kind = data_converter(cfg.name, cfg.converter)
    if kind == "toyworld":
        records, passages = generate(cfg.toyworld)
        out = convert_musique(((f"toyworld[{i}]", r) for i, r in enumerate(records)),
                              data_source="toyworld")
        for passage in passages:
            out.add_passage(passage)
        return out
    if not cfg.input_path:  # only this tool reads the source file; training reads the prepared rows
        raise ConfigError("data.input_path", f"data={cfg.name} needs the official-format file (data.input_path=FILE)")
    problems = ProblemLog()
    records = iter_json_records(cfg.input_path, problems)
    val, test = cfg.val_fraction, cfg.test_fraction
    if kind == "musique":
        out = convert_musique(records, val_fraction=val, test_fraction=test, split=cfg.split)
    elif kind == "hotpotqa":
        out = convert_hotpotqa(records, val_fraction=val, test_fraction=test, split=cfg.split)
    elif kind == "2wiki":
        out = convert_twowiki(records, val_fraction=val, test_fraction=test, split=cfg.split)
    else:
        out = convert_flashrag(records, data_source=cfg.name, split=cfg.split or "test")
    out.problems.problems[:0] = problems.problems
    return out


def prepare(cfg: DataConfig) -> dict:
    """Convert and write the dataset; return the summary that is also written to disk."""
    out = convert(cfg)
    if cfg.instruction != "search":
        template = INSTRUCTIONS[cfg.instruction]
        out.rows = [replace(r, prompt=tuple(build_prompt(r.question, template))) for r in out.rows]
    if not out.rows:
        raise DataError(f"no usable rows in {cfg.input_path or cfg.name} "
                        f"({len(out.problems)} dropped; first: {out.problems.problems[:1]})")
    root = Path(cfg.output_dir)
    counts = {}
    for split in SPLITS:
        rows = [r for r in out.rows if r.split == split][: cfg.max_rows]
        counts[split] = write_rows(rows, root / f"{split}.{cfg.format}") if rows else 0
    passages = 0
    if out.passages:  # FlashRAG sets have none: evaluation searches retrieval.corpus_path instead
        passages = write_corpus_jsonl(sorted(out.passages.values(), key=lambda p: p.id),
                                      root / "corpus.jsonl")
    summary = {"dataset": cfg.name, "source": cfg.input_path, "rows": counts,
               "dropped": len(out.problems), "corpus_passages": passages,
               "dropped_examples": [str(p) for p in out.problems.problems[:20]]}
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(cfg: Config) -> int:
    """Prepare cfg.data and print the counts."""
    try:
        summary = prepare(cfg.data)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{k} {v}" for k, v in summary["rows"].items())
    print(f"{summary['dataset']}: rows: {rows}; dropped rows: {summary['dropped']}; "
          f"corpus passages: {summary['corpus_passages']} -> {cfg.data.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, usage=__doc__ or ""))
