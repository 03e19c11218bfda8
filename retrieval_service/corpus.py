"""Passage corpus: JSONL parsing with line-numbered errors, and a memory-mapped Arrow store.

Runs wherever a retriever lives (the retrieval actor, the HTTP server, ``launch.build_index``),
on CPU. A corpus line is ``{"id", "contents"}`` (wiki-18 format of Search-R1/FlashRAG,
``contents`` = ``"Title"\\ntext``) or ``{"id", "title", "text"}`` (DESIGN.md 4, Retrieval API).

``CorpusStore.build`` converts the JSONL once into an uncompressed Arrow IPC file plus an
id -> row hash table (two ``.npy`` arrays); ``CorpusStore`` memory-maps all three, so a
multi-million-passage corpus lives in the page cache shared by every process on the node,
not in each process's heap, and ``row_of(id)`` is O(1) expected (one bucket, ~1 entry).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa

from workers.types import Document

logger = logging.getLogger(__name__)

CORPUS_FILE = "corpus.arrow"
"""Arrow IPC file with columns id, title, text (one row per passage, row = index id)."""
ID_OFFSETS_FILE = "corpus_id_offsets.npy"
"""Bucket start offsets of the id hash table (int64, num_buckets + 1)."""
ID_ROWS_FILE = "corpus_id_rows.npy"
"""Rows ordered by bucket (int64, num_passages)."""

_SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])
_WRITE_BATCH = 50_000
_MAX_REPORTED = 50


class CorpusError(ValueError):
    """The corpus file has bad lines; ``problems`` lists ``(line_number, reason)``."""

    def __init__(self, path: str | Path, problems: list[tuple[int, str]], total: int) -> None:
        shown = "\n".join(f"  line {line}: {reason}" for line, reason in problems)
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(f"{path}: {total} bad line(s)\n{shown}{more}")
        self.path = str(path)
        self.problems = problems
        self.total = total


def split_contents(contents: str) -> tuple[str, str]:
    """Split wiki-18 ``contents`` into ``(title, text)``: first line, quotes stripped.

    >>> split_contents('"Paris"\\nParis is the capital of France.')
    ('Paris', 'Paris is the capital of France.')
    >>> split_contents('no title line')
    ('', 'no title line')
    """
    if "\n" not in contents:
        return "", contents
    title, text = contents.split("\n", 1)
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text


class BadLineError(ValueError):
    """One corpus line is unusable; the message is the reason (without the line number)."""


def parse_line(raw: str) -> tuple[str, str, str]:
    """Parse one corpus line into ``(id, title, text)``; raise ``BadLineError`` with the reason."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadLineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise BadLineError(f"expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise BadLineError("missing field 'id'")
    pid = obj["id"]
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise BadLineError(f"field 'id' must be a string or an integer, got {type(pid).__name__}")
    if "contents" in obj:
        if not isinstance(obj["contents"], str):
            raise BadLineError("field 'contents' must be a string")
        title, text = split_contents(obj["contents"])
    elif "title" in obj and "text" in obj:
        title, text = obj["title"], obj["text"]
        if not isinstance(title, str) or not isinstance(text, str):
            raise BadLineError("fields 'title' and 'text' must be strings")
    else:
        missing = "'text'" if "title" in obj else "'title'" if "text" in obj else "'contents'"
        raise BadLineError(f"missing field {missing} (need 'contents', or 'title' and 'text')")
    return str(pid), title, text


def id_hash(pid: str) -> int:
    """Stable 64-bit hash of a passage id (same in every process, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(pid.encode("utf-8"), digest_size=8).digest(), "little")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, streamed (the corpus checksum recorded in the index manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _Writer:
    """Accumulates parsed rows and writes them to the Arrow file in record batches."""

    def __init__(self, sink: pa.ipc.RecordBatchFileWriter) -> None:
        self.sink = sink
        self.cols: tuple[list[str], list[str], list[str]] = ([], [], [])
        # Compact buffers: a wiki-18 build has 21M of each.
        self.hashes = array("Q")
        self.lines = array("q")

    def add(self, pid: str, title: str, text: str, line: int) -> None:
        for col, value in zip(self.cols, (pid, title, text), strict=True):
            col.append(value)
        self.hashes.append(id_hash(pid))
        self.lines.append(line)
        if len(self.cols[0]) >= _WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.cols[0]:
            arrays = [pa.array(col, type=pa.string()) for col in self.cols]
            self.sink.write_batch(pa.record_batch(arrays, schema=_SCHEMA))
            self.cols = ([], [], [])


def _read_lines(fh: IO[bytes], writer: _Writer, progress: bool) -> list[tuple[int, str]]:
    """Parse every line into ``writer``; return (line, reason) problems, all of them."""
    from tqdm.auto import tqdm

    problems: list[tuple[int, str]] = []
    fh.seek(0, 2)
    size = fh.tell()
    fh.seek(0)
    with tqdm(total=size, unit="B", unit_scale=True, desc="corpus", disable=not progress) as bar:
        for lineno, raw in enumerate(fh, start=1):
            bar.update(len(raw))
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append((lineno, f"not valid UTF-8 ({exc.reason})"))
                continue
            if not line.strip():
                continue
            try:
                writer.add(*parse_line(line), line=lineno)
            except BadLineError as exc:
                problems.append((lineno, str(exc)))
    writer.flush()
    return problems


def _duplicate_problems(table: pa.Table, hashes: np.ndarray, lines: np.ndarray) -> list[tuple[int, str]]:
    """Rows whose id repeats an earlier row's id (hash collisions are checked on the strings)."""
    order = np.argsort(hashes, kind="stable")
    same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
    ids = table.column("id")
    problems = []
    for pos in same:
        first, dup = int(order[pos]), int(order[pos + 1])
        first_id, dup_id = ids[first].as_py(), ids[dup].as_py()
        if first_id == dup_id:
            problems.append((int(lines[dup]), f"duplicate id {dup_id!r} (also on line {int(lines[first])})"))
    return sorted(problems)


def _write_id_table(hashes: np.ndarray, directory: Path) -> None:
    """Bucketed hash table: rows sorted by ``hash % num_buckets`` plus bucket offsets."""
    num_buckets = 1 << max(len(hashes) - 1, 1).bit_length()
    buckets = (hashes & np.uint64(num_buckets - 1)).astype(np.int64)
    rows = np.argsort(buckets, kind="stable").astype(np.int64)
    offsets = np.zeros(num_buckets + 1, dtype=np.int64)
    np.cumsum(np.bincount(buckets, minlength=num_buckets), out=offsets[1:])
    np.save(directory / ID_OFFSETS_FILE, offsets)
    np.save(directory / ID_ROWS_FILE, rows)


class CorpusStore:
    """Memory-mapped passages; row ``i`` is the passage FAISS/BM25 returns as id ``i``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / CORPUS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no corpus store at {path}: build the index first")
        # memory_map + read_all keeps the columns as zero-copy views of the file.
        self._table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        self._offsets = np.load(self.directory / ID_OFFSETS_FILE, mmap_mode="r")
        self._rows = np.load(self.directory / ID_ROWS_FILE, mmap_mode="r")
        self._ids = self._table.column("id")

    @classmethod
    def build(cls, jsonl_path: str | Path, directory: str | Path, progress: bool = True) -> CorpusStore:
        """Parse ``jsonl_path`` into ``directory``; raise ``CorpusError`` listing every bad line."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (CORPUS_FILE + ".tmp")
        with (open(jsonl_path, "rb") as fh, pa.OSFile(str(tmp), "wb") as out,
              pa.ipc.new_file(out, _SCHEMA) as sink):
            writer = _Writer(sink)
            problems = _read_lines(fh, writer, progress)
        table = pa.ipc.open_file(pa.memory_map(str(tmp), "r")).read_all()
        hashes = np.frombuffer(writer.hashes, dtype=np.uint64)
        problems += _duplicate_problems(table, hashes, np.frombuffer(writer.lines, dtype=np.int64))
        if not problems and table.num_rows == 0:
            problems.append((0, "the corpus has no passages"))
        if problems:
            tmp.unlink()
            problems.sort()
            raise CorpusError(jsonl_path, problems[:_MAX_REPORTED], len(problems))
        tmp.replace(directory / CORPUS_FILE)
        _write_id_table(hashes, directory)
        logger.info("corpus: %d passages from %s", table.num_rows, jsonl_path)
        return cls(directory)

    def __len__(self) -> int:
        return int(self._table.num_rows)

    def row_of(self, pid: str) -> int | None:
        """Row of passage ``pid``, or None; O(1) expected."""
        bucket = id_hash(pid) & (len(self._offsets) - 2)
        for row in self._rows[self._offsets[bucket]:self._offsets[bucket + 1]]:
            if self._ids[int(row)].as_py() == pid:
                return int(row)
        return None

    def get(self, pid: str) -> Document | None:
        """The passage with id ``pid`` (score 0), or None."""
        row = self.row_of(pid)
        return None if row is None else self.documents([row])[0]

    def documents(self, rows: Sequence[int], scores: Sequence[float] | None = None) -> list[Document]:
        """Documents for ``rows`` in order, with ``scores`` when given."""
        if len(rows) == 0:
            return []
        part = self._table.take(pa.array(np.asarray(rows, dtype=np.int64)))
        ids, titles, texts = (part.column(name).to_pylist() for name in ("id", "title", "text"))
        values = [0.0] * len(ids) if scores is None else [float(s) for s in scores]
        return [Document(id=i, title=t, text=x, score=s) for i, t, x, s in zip(ids, titles, texts, values, strict=True)]

    def iter_contents(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[list[str]]:
        """Passages as wiki-18 ``contents`` strings (what encoders and BM25 index), in batches."""
        stop = len(self) if stop is None else stop
        for lo in range(start, stop, batch_size):
            yield self.contents(range(lo, min(lo + batch_size, stop)))

    def contents(self, rows: Sequence[int] | range) -> list[str]:
        """``"Title"\\ntext`` of ``rows`` (a range is sliced, other sequences gathered)."""
        if isinstance(rows, range) and rows.step == 1:
            part = self._table.slice(rows.start, len(rows))
        else:
            part = self._table.take(pa.array(np.asarray(list(rows), dtype=np.int64)))
        titles, texts = part.column("title").to_pylist(), part.column("text").to_pylist()
        return [f'"{t}"\n{x}' for t, x in zip(titles, texts, strict=True)]


def iter_passages(jsonl_path: str | Path, batch_size: int = 10_000) -> Iterator[Document]:
    """Every passage of a corpus JSONL, in file order, without keeping an index.

    Parses through a temporary ``CorpusStore`` (so bad lines raise ``CorpusError`` with
    their line numbers, as at index build time) and reads it back in batches.
    """
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        store = CorpusStore.build(jsonl_path, tmp, progress=False)
        for lo in range(0, len(store), batch_size):
            yield from store.documents(range(lo, min(lo + batch_size, len(store))))
        del store  # its memory map must close before the directory goes
