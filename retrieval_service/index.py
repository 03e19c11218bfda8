"""Index directories: build (corpus store + FAISS or BM25 + manifest), check and load.

Runs in ``launch.build_index`` (build) and wherever a retriever starts (load): the
retrieval actor, the HTTP server. FAISS ``flat`` (exact inner product), ``hnsw`` and
``ivfpq`` indexes; with GPUs the loaded index is sharded over them, on CPU it stays put.

An index directory holds ``manifest.json`` (written last, so a crashed build has none),
the corpus store (``corpus.py``) and ``index.faiss`` or ``bm25/``. The manifest records how
the index was made; ``check_manifest`` refuses an index whose encoder, pooling, passage
prefix, truncation, index type or corpus differ from what the config asks for.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval_service.corpus import CorpusStore, sha256_file
from retrieval_service.sparse import build_bm25
from workers.config import ConfigError, RetrievalConfig

if TYPE_CHECKING:
    from retrieval_service.encoders import DenseEncoder

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FAISS_FILE = "index.faiss"
MANIFEST_VERSION = 1
_PQ_M_CHOICES = (96, 64, 56, 48, 40, 32, 28, 24, 20, 16, 12, 8, 4, 2, 1)  # GPU-supported PQ sizes


class IndexNotFoundError(FileNotFoundError):
    """The index directory has no (complete) index."""


class IndexMismatchError(ValueError):
    """The index on disk was built differently from what the config asks for."""


@dataclass
class Manifest:
    """How an index directory was built. Dense-only fields are None for BM25."""

    method: str
    num_passages: int
    corpus_sha256: str
    corpus_size: int
    corpus_path: str
    encoder: str | None = None
    pooling: str | None = None
    passage_prefix: str | None = None
    query_prefix: str | None = None
    max_length: int | None = None
    dim: int | None = None
    index_type: str | None = None
    version: int = MANIFEST_VERSION
    created: str = ""

    def save(self, index_dir: str | Path) -> None:
        path = Path(index_dir) / MANIFEST_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, index_dir: str | Path) -> Manifest:
        path = Path(index_dir) / MANIFEST_FILE
        if not path.is_file():
            raise IndexNotFoundError(
                f"no index in {index_dir} ({MANIFEST_FILE} missing): build one with "
                f"python -m launch.build_index retrieval.corpus_path=FILE retrieval.index_dir={index_dir}")
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _config_fields(cfg: RetrievalConfig) -> dict[str, Any]:
    """The manifest fields an index must share with ``cfg`` to be usable (query_prefix is not
    baked into passage vectors, so it only warns)."""
    if cfg.method == "bm25":
        return {"method": "bm25"}
    return {"method": "dense", "encoder": cfg.encoder, "pooling": cfg.pooling,
            "passage_prefix": cfg.passage_prefix, "max_length": cfg.max_length,
            "index_type": cfg.index_type}


def check_manifest(manifest: Manifest, cfg: RetrievalConfig, index_dir: str | Path,
                   corpus_path: str | Path | None = None) -> None:
    """Raise ``IndexMismatchError`` listing every difference between the index and ``cfg``."""
    problems = [f"retrieval.{name}: index built with {getattr(manifest, name)!r}, config asks for {want!r}"
                for name, want in _config_fields(cfg).items() if getattr(manifest, name) != want]
    if manifest.version != MANIFEST_VERSION:
        problems.append(f"manifest version {manifest.version}, this code reads {MANIFEST_VERSION}")
    if corpus_path is not None and not problems:
        size = Path(corpus_path).stat().st_size
        if size != manifest.corpus_size or sha256_file(corpus_path) != manifest.corpus_sha256:
            problems.append(f"retrieval.corpus_path: {corpus_path} is not the corpus the index was built "
                            f"from ({manifest.corpus_path}, sha256 {manifest.corpus_sha256[:12]}...)")
    if problems:
        raise IndexMismatchError(
            f"refusing the index in {index_dir}: it does not match the config\n  " + "\n  ".join(problems)
            + "\nRebuild it with python -m launch.build_index (same overrides), or change the config to match.")
    if cfg.method == "dense" and manifest.query_prefix != cfg.query_prefix:
        logger.warning("index %s was built expecting query prefix %r; config uses %r",
                       index_dir, manifest.query_prefix, cfg.query_prefix)


def _ivfpq_factory(dim: int, n: int, cfg: RetrievalConfig) -> tuple[str, int]:
    """FAISS factory string for IVF-PQ and the number of training vectors it needs."""
    nlist = cfg.ivf_nlist or int(4 * math.sqrt(n))
    nlist = max(1, min(nlist, n // 39 or 1))  # FAISS wants ~39 training points per centroid
    m = cfg.pq_m or next(c for c in _PQ_M_CHOICES if dim % c == 0 and c <= max(1, dim // 8))
    if dim % m:
        raise ConfigError("retrieval.pq_m", f"{m} must divide the embedding dimension {dim}")
    # 8-bit codes (256 centroids per sub-quantizer) need ~10k vectors; tiny corpora get fewer bits.
    nbits = max(1, min(8, int(math.log2(max(n // 39, 2)))))
    train = min(n, max(39 * nlist, 39 * (1 << nbits), 10_000), 500_000)
    return f"IVF{nlist},PQ{m}x{nbits}", train


def new_faiss_index(dim: int, n: int, cfg: RetrievalConfig) -> tuple[Any, int]:
    """An empty inner-product index of ``cfg.index_type`` and how many vectors train it."""
    import faiss

    if cfg.index_type == "flat":
        return faiss.IndexFlatIP(dim), 0
    if cfg.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(200, cfg.ef_search)
        return index, 0
    if cfg.index_type == "ivfpq":
        spec, train = _ivfpq_factory(dim, n, cfg)
        logger.info("ivfpq index %s, trained on %d passages", spec, train)
        return faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT), train
    raise ConfigError("retrieval.index_type", f"must be flat, hnsw or ivfpq, got {cfg.index_type!r}")


def build_faiss(store: CorpusStore, encoder: DenseEncoder, cfg: RetrievalConfig,
                progress: bool = True) -> Any:
    """Encode every passage of ``store`` and add it to a new index (trained first if needed)."""
    from tqdm.auto import tqdm

    n = len(store)
    index, train_size = new_faiss_index(encoder.dim, n, cfg)
    if train_size:
        rows = np.sort(np.random.default_rng(0).choice(n, size=train_size, replace=False))
        index.train(encoder.encode_passages(store.contents(rows.tolist())))
    chunk = cfg.encode_batch_size * 16
    with tqdm(total=n, unit="passage", desc="encode", disable=not progress) as bar:
        for texts in store.iter_contents(chunk):
            index.add(encoder.encode_passages(texts))
            bar.update(len(texts))
    return index


def set_search_params(index: Any, cfg: RetrievalConfig) -> None:
    """Apply query-time knobs: HNSW efSearch, IVF nprobe."""
    import faiss

    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = cfg.ef_search
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(cfg.nprobe, ivf.nlist)


def to_device(index: Any, device: str) -> Any:
    """Shard ``index`` over all visible GPUs when ``device`` is cuda and faiss has GPU support."""
    import faiss

    if not device.startswith("cuda"):
        return index
    num_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if num_gpus == 0:
        logger.warning("device %s but this faiss has no GPU support: the index stays on CPU", device)
        return index
    if hasattr(index, "hnsw"):
        logger.info("FAISS has no GPU HNSW: the index stays on CPU")
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True  # split the vectors over the GPUs instead of copying them to each
    options.useFloat16 = True
    logger.info("moving the index to %d GPU(s), sharded", num_gpus)
    return faiss.index_cpu_to_all_gpus(index, co=options)


def load_faiss(index_dir: str | Path, manifest: Manifest, cfg: RetrievalConfig, device: str) -> Any:
    """Read ``index.faiss``, check it against the manifest, set search knobs, move to GPUs."""
    import faiss

    index = faiss.read_index(str(Path(index_dir) / FAISS_FILE))
    if index.ntotal != manifest.num_passages or index.d != manifest.dim:
        raise IndexMismatchError(
            f"refusing the index in {index_dir}: index.faiss holds {index.ntotal} vectors of dim {index.d}, "
            f"manifest says {manifest.num_passages} of dim {manifest.dim}; rebuild it")
    set_search_params(index, cfg)
    return to_device(index, device)


def build_index(cfg: RetrievalConfig, corpus_path: str | Path, index_dir: str | Path,
                device: str = "auto", progress: bool = True,
                encoder: DenseEncoder | None = None) -> Manifest:
    """Build the whole index directory for ``corpus_path`` as ``cfg`` describes; return its manifest.

    Raises ``CorpusError`` (line-numbered) for a bad corpus before any encoding.
    """
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    (index_dir / MANIFEST_FILE).unlink(missing_ok=True)  # invalid until the new build completes
    start = time.perf_counter()
    sha = sha256_file(corpus_path)
    store = CorpusStore.build(corpus_path, index_dir, progress=progress)
    manifest = Manifest(method=cfg.method, num_passages=len(store), corpus_sha256=sha,
                        corpus_size=Path(corpus_path).stat().st_size,
                        corpus_path=str(Path(corpus_path).resolve()),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if cfg.method == "bm25":
        build_bm25(store.iter_contents(10_000), index_dir)
    else:
        if encoder is None:
            from retrieval_service.encoders import DenseEncoder

            encoder = DenseEncoder.from_config(cfg, device)
        import faiss

        faiss.write_index(build_faiss(store, encoder, cfg, progress), str(index_dir / FAISS_FILE))
        manifest = dataclasses.replace(
            manifest, encoder=cfg.encoder, pooling=cfg.pooling, passage_prefix=cfg.passage_prefix,
            query_prefix=cfg.query_prefix, max_length=cfg.max_length, dim=encoder.dim,
            index_type=cfg.index_type)
    manifest.save(index_dir)
    logger.info("built %s index of %d passages in %s (%.1f s)", cfg.method, len(store), index_dir,
                time.perf_counter() - start)
    return manifest
