"""``launch.evaluate eval_sets=[DIR_OR_PRESET,...]``: several prepared sets, one table.

Runs in the user's process, with the sessions of ``launch.evaluate`` (in-process or on Ray).
Each entry is a prepared directory or a ``conf/data`` preset (its ``output_dir``),
optionally followed by ``@CORPUS_OR_INDEX``, a corpus JSONL or a built index directory
for that set alone. The other sets share one retriever: ``retrieval.index_dir`` or
``retrieval.corpus_path`` when given (wiki-18 for the paper's table), else each set's own
``corpus.jsonl``. Sets with the same retrieval run on one policy engine; a different
retriever starts the next engine.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from omegaconf import OmegaConf

from launch.config import CONFIG_DIR
from launch.evaluate import EvalArgs, eval_session, evaluate_rows, resolve_model, retrieval_config
from workers.config import Config, ConfigError, RetrievalConfig
from workers.data.flashrag import paper_name
from workers.data.rows import QARow, read_rows
from workers.eval_table import SetScore, table_json, table_markdown, table_text, unique_names

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSet:
    """One entry of ``eval_sets``: its rows (first ``limit``), label and retrieval."""

    entry: str
    root: Path
    rows_path: Path
    rows: tuple[QARow, ...]
    name: str
    retrieval: RetrievalConfig


def parse_set_list(value: str) -> tuple[str, ...]:
    """``[a,b]`` or ``a,b`` -> ``("a", "b")``; raise ``ConfigError`` on an empty list.

    >>> parse_set_list("[data/2wiki, bamboogle@/idx/wiki18]")
    ('data/2wiki', 'bamboogle@/idx/wiki18')
    """
    items = tuple(i.strip().strip("'\"") for i in value.strip().removeprefix("[").removesuffix("]").split(","))
    if not all(items):
        raise ConfigError("eval_sets", f"must be a list of prepared directories or data presets, got {value!r}")
    return items


def set_root(entry: str) -> Path:
    """The prepared directory an entry names: itself, or a data preset's ``output_dir``."""
    if Path(entry).is_dir():
        return Path(entry)
    preset = Path(CONFIG_DIR) / "data" / f"{entry}.yaml"
    if preset.is_file():
        node = OmegaConf.to_container(OmegaConf.load(preset))
        assert isinstance(node, dict), preset  # a data preset is a mapping
        root = str(node.get("output_dir") or f"data/{entry}").replace("${data.name}", str(node.get("name", entry)))
        if not Path(root).is_dir():
            raise ConfigError("eval_sets", f"{entry}: the preset's output_dir {root} does not exist: run "
                              f"`python -m launch.prepare_data data={entry} data.input_path=...` first")
        return Path(root)
    raise ConfigError("eval_sets", f"{entry!r} is neither a directory nor a data preset in conf/data")


def set_retrieval(cfg: Config, entry: str, root: Path, override: str | None) -> RetrievalConfig:
    """The retrieval for one set: its ``@`` override, the shared one, or its own corpus."""
    from retrieval_service.index import MANIFEST_FILE

    if override:
        path = Path(override)
        if path.is_dir():
            if not (path / MANIFEST_FILE).is_file():
                raise ConfigError("eval_sets", f"{entry}: {path} is not a built index (no {MANIFEST_FILE})")
            return replace(cfg.retrieval, index_dir=str(path), corpus_path=None)
        if not path.is_file():
            raise ConfigError("eval_sets", f"{entry}: {path} is neither a corpus file nor an index directory")
        return replace(cfg.retrieval, corpus_path=str(path), index_dir=None)
    if cfg.retrieval.index_dir or cfg.retrieval.corpus_path:
        return cfg.retrieval
    if not (root / "corpus.jsonl").is_file():
        raise ConfigError("eval_sets", f"{entry}: {root} has no corpus.jsonl (FlashRAG sets ship none): set "
                          f"retrieval.corpus_path or retrieval.index_dir (wiki-18), or write {entry}@CORPUS_OR_INDEX")
    return replace(cfg.retrieval, corpus_path=str(root / "corpus.jsonl"))


def load_set(cfg: Config, entry: str, split: str, limit: int | None) -> EvalSet:
    """Resolve an ``eval_sets`` entry and read its rows (``DataError`` on a missing split)."""
    where, _, override = entry.partition("@")
    root = set_root(where)
    rows_path = root / f"{split}.{cfg.data.format}"
    other = root / f"{split}.{'jsonl' if cfg.data.format == 'parquet' else 'parquet'}"
    if not rows_path.exists() and other.exists():
        rows_path = other
    rows = read_rows(rows_path)[:limit]
    sources = {r.data_source for r in rows}
    name = paper_name(sources.pop()) if len(sources) == 1 else root.name
    return EvalSet(entry, root, rows_path, tuple(rows), name, set_retrieval(cfg, entry, root, override or None))


def _slug(root: Path, taken: set[str]) -> str:
    slug, n = root.name or "set", 2
    while slug in taken:
        slug, n = f"{root.name}-{n}", n + 1
    taken.add(slug)
    return slug


def evaluate_sets(cfg: Config, args: EvalArgs, use_ray: bool = False) -> int:
    """Evaluate every set of ``args.eval_sets``, print one table and write it as JSON and Markdown."""
    sets = [load_set(cfg, e, args.split, args.limit) for e in args.eval_sets]
    names = unique_names([s.name for s in sets], [str(s.root) for s in sets])
    sets = [replace(s, name=n) for s, n in zip(sets, names, strict=True)]
    model_path = resolve_model(replace(cfg, data=replace(cfg.data, output_dir=str(sets[0].root))), args.checkpoint)
    out_dir = Path(args.output or args.checkpoint or cfg.trainer.run_dir)
    taken: set[str] = set()
    outputs = [out_dir / f"predictions-{_slug(s.root, taken)}-{args.split}.jsonl" for s in sets]
    scores: dict[int, SetScore] = {}
    groups: list[tuple[RetrievalConfig, list[int]]] = []
    for i, s in enumerate(sets):
        group = next((g for g in groups if g[0] == s.retrieval), None)
        if group is None:
            groups.append((s.retrieval, [i]))
        else:
            group[1].append(i)
    for rcfg, members in groups:
        run_cfg = replace(cfg, retrieval=rcfg, data=replace(cfg.data, output_dir=str(sets[members[0]].root)))
        retrieval_config(run_cfg)  # fail fast on a missing corpus, before the engine starts
        with eval_session(run_cfg, model_path, use_ray, args.batch_size) as session:
            for i in members:
                s = sets[i]
                result = evaluate_rows(session, s.rows, args.batch_size, outputs[i], desc=s.name)
                has_support = any(r.ground_truth.support_docs for r in s.rows)
                scores[i] = SetScore.from_overall(s.name, len(s.rows), result.overall, has_support,
                                                  str(s.rows_path), str(outputs[i]))
    ordered = [scores[i] for i in range(len(sets))]
    table_paths = [out_dir / f"eval-sets-{args.split}.{ext}" for ext in ("json", "md")]
    meta = {"policy": model_path, "split": args.split, "limit": args.limit, "engine": cfg.rollout.engine}
    table_paths[0].write_text(json.dumps(table_json(ordered, **meta), indent=2) + "\n")
    table_paths[1].write_text(table_markdown(ordered) + "\n")
    print(f"policy: {model_path}")
    limit = f"; at most {args.limit} per set" if args.limit else ""
    print(f"split: {args.split} ({sum(s.questions for s in ordered)} questions{limit}, greedy, "
          f"engine {cfg.rollout.engine})")
    print(table_text(ordered))
    print(f"predictions: {out_dir}/predictions-*-{args.split}.jsonl")
    print(f"table:       {table_paths[0]} {table_paths[1]}")
    return 0
