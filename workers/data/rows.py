"""Dataset rows in the StepSearch/Search-R1 format (DESIGN.md 4), as parquet or JSONL.

A row is ``{data_source, prompt, ability, reward_model: {style, ground_truth: {target,
search_keys}}, extra_info: {split, index, id, question, support_docs, support_doc_ids}}``.
``QARow`` is its typed form; ``row_from_dict`` checks a row and says what is wrong where.
``support_docs`` may also be StepSearch's released form, dicts ``{title, paragraph_text}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.data.problems import DataError
from workers.data.prompt import build_prompt
from workers.types import GroundTruth, support_doc_contents

ABILITY = "fact-reasoning"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class QARow:
    """One question with its ground truth, ready for rollout and reward."""

    id: str
    data_source: str
    question: str
    prompt: tuple[dict[str, str], ...]
    ground_truth: GroundTruth
    split: str
    index: int
    support_doc_ids: tuple[str, ...] = ()
    num_hops: int = 0


def make_row(*, id: str, data_source: str, question: str, targets: Sequence[str],
             search_keys: Sequence[Sequence[str]], support_docs: Sequence[str],
             support_doc_ids: Sequence[str], split: str, index: int, num_hops: int) -> QARow:
    """Build a row with the default search prompt."""
    return QARow(
        id=id, data_source=data_source, question=question,
        prompt=tuple(build_prompt(question)),
        ground_truth=GroundTruth(target=tuple(targets),
                                 search_keys=tuple(tuple(g) for g in search_keys),
                                 support_docs=tuple(support_docs), num_hops=num_hops),
        split=split, index=index, support_doc_ids=tuple(support_doc_ids), num_hops=num_hops)


def row_to_dict(row: QARow) -> dict[str, Any]:
    """The on-disk (StepSearch/Search-R1) form of a row."""
    gt = row.ground_truth
    return {
        "data_source": row.data_source,
        "prompt": [dict(m) for m in row.prompt],
        "ability": ABILITY,
        "reward_model": {
            "style": "rule",
            "ground_truth": {"target": list(gt.target),
                             "search_keys": [list(g) for g in gt.search_keys]},
        },
        "extra_info": {
            "split": row.split, "index": row.index, "id": row.id, "question": row.question,
            "support_docs": list(gt.support_docs), "support_doc_ids": list(row.support_doc_ids),
            "num_hops": row.num_hops,
        },
    }


def _field(record: dict[str, Any], path: str, where: str) -> Any:
    node: Any = record
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node or node[key] is None:
            raise DataError(f"{where}: missing field '{path}'")
        node = node[key]
    return node


def _str_list(value: Any, path: str, where: str) -> list[str]:
    if isinstance(value, str) or (not isinstance(value, (list, tuple)) and not hasattr(value, "tolist")):
        raise DataError(f"{where}: '{path}' must be a list of strings")
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    if not all(isinstance(x, str) for x in items):
        raise DataError(f"{where}: '{path}' must contain only strings")
    return items


def _support_docs(value: Any, where: str) -> list[str]:
    """``extra_info.support_docs`` as contents strings: accepts strings and release-style dicts."""
    path = "extra_info.support_docs"
    if isinstance(value, (str, dict)) or (not isinstance(value, (list, tuple)) and not hasattr(value, "tolist")):
        raise DataError(f"{where}: '{path}' must be a list")
    items = value.tolist() if hasattr(value, "tolist") else list(value)
    docs = []
    for i, doc in enumerate(items):
        try:
            docs.append(support_doc_contents(doc))
        except TypeError as exc:
            raise DataError(f"{where}: '{path}[{i}]' {exc}") from exc
    return docs


def _int_field(extra: dict[str, Any], name: str, where: str) -> int:
    """A non-negative integer of ``extra_info`` (missing or null: 0)."""
    value = extra.get(name) or 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise DataError(f"{where}: 'extra_info.{name}' must be a non-negative integer, got {value!r}")
    return number


def row_from_dict(record: dict[str, Any], where: str = "row") -> QARow:
    """Check a row read from disk and type it. Raises ``DataError`` naming ``where``."""
    prompt = _field(record, "prompt", where)
    prompt = prompt.tolist() if hasattr(prompt, "tolist") else prompt
    if not prompt or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        raise DataError(f"{where}: 'prompt' must be a non-empty list of {{role, content}} messages")
    targets = _str_list(_field(record, "reward_model.ground_truth.target", where),
                        "reward_model.ground_truth.target", where)
    if not any(t.strip() for t in targets):
        raise DataError(f"{where}: 'reward_model.ground_truth.target' has no non-empty answer")
    gt_node = record["reward_model"]["ground_truth"]
    keys_raw = gt_node.get("search_keys")
    keys = [] if keys_raw is None else [
        _str_list(g, "reward_model.ground_truth.search_keys", where) for g in keys_raw]
    extra = record.get("extra_info") or {}
    support = _support_docs(extra.get("support_docs") or [], where)
    support_ids = _str_list(extra.get("support_doc_ids", []), "extra_info.support_doc_ids", where)
    index = _int_field(extra, "index", where)
    num_hops = _int_field(extra, "num_hops", where)
    return QARow(
        id=str(extra.get("id", index)), data_source=str(_field(record, "data_source", where)),
        question=str(extra.get("question", "")),
        prompt=tuple({"role": str(m["role"]), "content": str(m["content"])} for m in prompt),
        ground_truth=GroundTruth(tuple(targets), tuple(tuple(g) for g in keys), tuple(support), num_hops),
        split=str(extra.get("split", "train")), index=index,
        support_doc_ids=tuple(support_ids), num_hops=num_hops)


def write_rows(rows: Iterable[QARow], path: str | Path) -> int:
    """Write rows as parquet (``.parquet``) or JSONL (``.jsonl``); return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [row_to_dict(r) for r in rows]
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records, schema=_arrow_schema()), tmp)
    elif path.suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    else:
        raise DataError(f"{path}: unknown row format '{path.suffix}' (use .parquet or .jsonl)")
    tmp.replace(path)
    return len(records)


def read_rows(path: str | Path) -> list[QARow]:
    """Read and check every row of a parquet or JSONL file; the first bad row raises."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such dataset file (run launch.prepare_data first?)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
        return [row_from_dict(r, f"{path}[row {i}]") for i, r in enumerate(records)]
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
                rows.append(row_from_dict(record, f"{path}:{lineno}"))
    return rows


def _arrow_schema() -> Any:
    import pyarrow as pa

    strings = pa.list_(pa.string())
    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([
            ("style", pa.string()),
            ("ground_truth", pa.struct([("target", strings), ("search_keys", pa.list_(strings))])),
        ])),
        ("extra_info", pa.struct([
            ("split", pa.string()), ("index", pa.int64()), ("id", pa.string()),
            ("question", pa.string()), ("support_docs", strings),
            ("support_doc_ids", strings), ("num_hops", pa.int64()),
        ])),
    ])
