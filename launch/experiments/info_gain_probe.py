"""What the information gain pays a search for, under both ``reward.info_gain_idf`` choices.

    python -m launch.experiments.info_gain_probe RUN_DIR [RUN_DIR ...] [--data DIR]
    python -m launch.experiments.info_gain_probe --musique FILE

With run directories of ``launch.experiments.toyworld_learning``: reads their test
predictions (as ``answer_breakdown`` does), the test rows and ``corpus.jsonl`` of ``--data``
(default ``data/toyworld_learning``), and prints, per policy, for the k-th search of an
episode split by whether it retrieved a supporting paragraph not retrieved before: the
number of searches and the mean information gain G_k with the idf of each retrieved
passage and the gold ones (``pair``, the default) and with the corpus's idf (``corpus``).

With ``--musique FILE`` (MuSiQue's JSON format): for every question, the gain of
retrieving one of its supporting paragraphs alone against one of its distractor
paragraphs alone, over the idf choices; the corpus is every distinct paragraph in the file.
Nothing is re-run and no model is loaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from launch.experiments.answer_breakdown import collect
from workers.data.rows import read_rows
from workers.reward.info_gain import CorpusIdf, CosineFn, information_gains, tfidf_cosines

SEARCH_GROUPS = ("new gold", "no new gold")


def corpus_contents(path: Path) -> dict[str, str]:
    """Passage id -> ``"Title"\\ntext`` (what the reward scores); bad lines raise ``CorpusError``."""
    from retrieval_service.corpus import iter_passages

    return {d.id: d.contents for d in iter_passages(path)}


def _test_rows(data_dir: Path) -> dict[str, Any]:
    for suffix in ("parquet", "jsonl"):
        path = data_dir / f"test.{suffix}"
        if path.is_file():
            return {row.id: row for row in read_rows(path)}
    raise FileNotFoundError(f"no test.parquet or test.jsonl in {data_dir}")


def search_gains(records: list[dict[str, Any]], rows: dict[str, Any], contents: dict[str, str],
                 cosines: dict[str, CosineFn]) -> dict[tuple[int, str], dict[str, list[float]]]:
    """Gains per (search number, group), per idf choice, over the episodes in ``records``."""
    out: dict[tuple[int, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        row_id = str(record["sample_id"]).split("#")[0]
        if row_id not in rows:
            raise ValueError(f"prediction {record['sample_id']!r} has no test row (wrong --data?)")
        row = rows[row_id]
        searches = [t for t in record.get("turns", []) if t.get("kind") == "search"]
        missing = [i for t in searches for i in t.get("doc_ids", []) if i not in contents]
        if missing:
            raise ValueError(f"prediction {record['sample_id']!r}: passage {missing[0]!r} is not in the corpus")
        retrieved = [[contents[i] for i in t.get("doc_ids", [])] for t in searches]
        gold, seen = set(row.support_doc_ids), set()
        groups = []
        for t in searches:
            ids = set(t.get("doc_ids", []))
            groups.append(SEARCH_GROUPS[0] if (ids & gold) - seen else SEARCH_GROUPS[1])
            seen |= ids
        for name, fn in cosines.items():
            gains = information_gains(retrieved, row.ground_truth.support_docs, fn)
            for k, (group, gain) in enumerate(zip(groups, gains, strict=True), 1):
                out[(k, group)][name].append(gain)
    return out


def _table(gains: dict[tuple[int, str], dict[str, list[float]]], names: list[str]) -> list[str]:
    lines = [f"{'search':<8}{'retrieved':<14}{'n':>6}" + "".join(f"{'G ' + n:>12}" for n in names)]
    for (k, group), by_name in sorted(gains.items()):
        n = len(by_name[names[0]])
        lines.append(f"{k:<8}{group:<14}{n:>6}" + "".join(f"{statistics.fmean(by_name[m]):>12.3f}" for m in names))
    return lines


def musique_gains(path: Path) -> dict[str, tuple[float, float, int, int]]:
    """Per idf choice: mean gain of one supporting paragraph, of one distractor, and their counts."""
    try:
        questions = json.loads(path.read_text(encoding="utf-8"))
        paragraphs = [[(f'"{p["title"]}"\n{p["paragraph_text"]}', bool(p["is_supporting"]))
                       for p in q["paragraphs"]] for q in questions]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not MuSiQue's JSON format ({exc!r})") from exc
    idf = CorpusIdf.from_texts(dict.fromkeys(text for ps in paragraphs for text, _ in ps))
    out = {}
    for name, fn in (("pair", tfidf_cosines), ("corpus", idf.cosines)):
        gold_gains, other_gains = [], []
        for ps in paragraphs:
            gold = [text for text, supporting in ps if supporting]
            for text, supporting in ps:
                (gold_gains if supporting else other_gains).append(information_gains([[text]], gold, fn)[0])
        out[name] = (statistics.fmean(gold_gains), statistics.fmean(other_gains), len(gold_gains), len(other_gains))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.experiments.info_gain_probe",
                                     description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run directories of the learning experiment")
    parser.add_argument("--data", type=Path, default=Path("data/toyworld_learning"),
                        help="prepared data directory: test rows and corpus.jsonl")
    parser.add_argument("--musique", type=Path, help="a MuSiQue JSON file: supporting vs distractor paragraphs")
    args = parser.parse_args(argv)
    if not args.runs and args.musique is None:
        parser.error("give run directories or --musique FILE")
    try:
        if args.musique is not None:
            print(f"== {args.musique}: gain of one paragraph retrieved alone ==")
            print(f"{'idf':<8}{'supporting':>12}{'distractor':>12}{'ratio':>8}")
            for name, (gold, other, _, _) in musique_gains(args.musique).items():
                print(f"{name:<8}{gold:>12.3f}{other:>12.3f}{other / gold:>8.2f}")
        if args.runs:
            from retrieval_service.corpus import CorpusError

            try:
                contents = corpus_contents(args.data / "corpus.jsonl")
            except CorpusError as exc:
                raise ValueError(str(exc)) from exc
            rows = _test_rows(args.data)
            cosines: dict[str, CosineFn] = {"pair": tfidf_cosines,
                                            "corpus": CorpusIdf.from_texts(contents.values()).cosines}
            for policy, records in collect(args.runs).items():
                print(f"\n== {policy} ({len(records)} test episodes): information gain per search ==")
                print("\n".join(_table(search_gains(records, rows, contents, cosines), list(cosines))))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
