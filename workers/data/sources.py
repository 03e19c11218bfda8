"""Reading official dataset files (a JSON array or JSONL) with a location for every record."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workers.data.problems import DataError, ProblemLog


def iter_json_records(path: str | Path, problems: ProblemLog) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)`` from a JSON array (``file[i]``) or JSONL (``file:line``).

    Unparseable JSONL lines are logged in ``problems`` and skipped; an unparseable JSON
    array (nothing usable) raises ``DataError``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    with path.open(encoding="utf-8") as fh:
        head = fh.read(1)
        while head and head.isspace():
            head = fh.read(1)
    if head == "[":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        for i, record in enumerate(records):
            yield f"{path}[{i}]", record
        return
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                problems.add(f"{path}:{lineno}", f"not valid JSON ({exc.msg})")


def hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic train/validation/test assignment from a record's id."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x100000000
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "validation"
    return "train"
