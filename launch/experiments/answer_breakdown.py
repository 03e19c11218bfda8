"""Where the learning experiment's test answers go right and wrong, from its predictions files.

    python -m launch.experiments.answer_breakdown runs/RUN [runs/RUN2 ...]

Reads ``sft_test_predictions.jsonl`` and every ``<arm>-seed<N>/test_predictions.jsonl``
that ``launch.experiments.toyworld_learning`` wrote under each run directory, and prints,
per policy (the warm start, then each arm with its seeds pooled) and per number of hops:
questions, EM, the share of answers that were an empty ``<answer> </answer>``, and EM and
the empty share split by how many searches the episode made. Nothing is re-run.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SFT_FILE = "sft_test_predictions.jsonl"
ARM_FILE = "test_predictions.jsonl"
_ARM_DIR = re.compile(r"(?P<arm>.+)-seed(?P<seed>\d+)")


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The records of one predictions file; a malformed line is an error naming it."""
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                record["em"], record["num_searches"], record["num_hops"] = (
                    float(record["em"]), int(record["num_searches"]), int(record.get("num_hops") or 0))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a prediction record ({exc})") from exc
            records.append(record)
    return records


def collect(run_dirs: Iterable[Path]) -> dict[str, list[dict[str, Any]]]:
    """Records per policy: ``sft`` (each run's warm start; the same one is read once) and each arm."""
    run_dirs = list(run_dirs)
    policies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen_sft: set[str] = set()
    for run in run_dirs:
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: no such run directory")
        sft = run / SFT_FILE
        if sft.is_file():
            text = sft.read_text(encoding="utf-8")
            if text not in seen_sft:  # runs from one warm start score it identically
                seen_sft.add(text)
                policies["sft"].extend(read_predictions(sft))
        for arm_dir in sorted(p for p in run.iterdir() if p.is_dir()):
            match = _ARM_DIR.fullmatch(arm_dir.name)
            if match and (arm_dir / ARM_FILE).is_file():
                policies[match["arm"]].extend(read_predictions(arm_dir / ARM_FILE))
    if not policies:
        raise FileNotFoundError(f"no {SFT_FILE} or <arm>-seed<N>/{ARM_FILE} under {', '.join(map(str, run_dirs))}")
    return dict(policies)


def _empty(record: dict[str, Any]) -> bool:
    return record.get("prediction") is not None and not str(record["prediction"]).strip()


def breakdown(records: list[dict[str, Any]]) -> list[tuple[str, int, float, float]]:
    """(group, questions, EM, empty share) per hop count, per (hops, searches), and overall."""
    groups: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["num_hops"], -1)].append(r)
        groups[(r["num_hops"], r["num_searches"])].append(r)
    rows = []
    for (hops, searches), rs in sorted(groups.items()):
        name = f"{hops}-hop" if searches < 0 else f"  {hops}-hop, {searches} searches"
        rows.append((name, len(rs), sum(r["em"] for r in rs) / len(rs), sum(map(_empty, rs)) / len(rs)))
    rows.append(("all", len(records), sum(r["em"] for r in records) / len(records),
                 sum(map(_empty, records)) / len(records)))
    return rows


def report(policies: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for name, records in policies.items():
        lines += ["", f"== {name} ({len(records)} test episodes) ==",
                  f"{'group':<28}{'n':>6}{'EM':>8}{'empty':>8}"]
        lines += [f"{g:<28}{n:>6}{em:>8.3f}{empty:>8.3f}" for g, n, em, empty in breakdown(records)]
    return "\n".join(lines[1:])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any(a.startswith("-") for a in args):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        print(report(collect(Path(a) for a in args)))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
