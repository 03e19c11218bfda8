"""The cached supervised warm start that the quick start trains from (``model.warm_start=sft``).

Runs in the driver (``launch.train``). When ``model.path`` is unset and
``model.warm_start=sft``, StePPO does not start from the tiny policy's random weights:
it starts from that policy after the SFT stage (``launch.sft``) on the training rows.
The result is cached under ``model.build_dir`` as ``sft-<key>``, where the key hashes
everything the weights depend on: the tiny policy build (itself keyed by its config and
texts), the data files, the SFT, learner, rollout and retrieval settings that shape the
gold trajectories and their training, and the seed. A build runs in a hidden staging
folder and is renamed into place only when complete, so a killed build leaves nothing a
later run would trust; such leftovers are removed by the next build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from workers.config import Config

logger = logging.getLogger(__name__)

MARKER = "WARM_START.json"
"""Written last into a complete warm start (its SFT summary and key inputs)."""
_FORMAT_VERSION = 1  # bump when the recipe changes, so cached warm starts are not reused


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def warm_start_inputs(cfg: Config, policy_path: str) -> dict[str, Any]:
    """Everything the warm start's weights depend on (hashed into its cache key)."""
    from workers.sft import sft_learner_config

    data_dir = Path(cfg.data.output_dir)
    files = [data_dir / f"train.{cfg.data.format}", data_dir / "corpus.jsonl"]
    ro, rt = cfg.rollout, cfg.retrieval
    return {
        "v": _FORMAT_VERSION, "policy": Path(policy_path).name, "seed": cfg.seed,
        "data": {f.name: file_digest(f) for f in files if f.exists()},
        "sft": asdict(cfg.sft), "learner": asdict(sft_learner_config(cfg)),
        "rollout": {k: getattr(ro, k) for k in ("max_turns", "max_prompt_tokens", "max_response_tokens",
                                                "max_obs_tokens", "max_action_tokens")},
        "retrieval": {k: getattr(rt, k) for k in ("method", "encoder", "pooling", "index_type", "topk",
                                                  "encoder_dtype", "max_length")},
    }


def warm_start_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_warm_start(build_dir: str | Path, key: str) -> Path | None:
    """The complete warm start for ``key``, or None (a folder without its marker is not trusted)."""
    target = Path(build_dir).expanduser() / f"sft-{key}"
    return target if (target / MARKER).exists() else None


def _sweep_leftovers(root: Path, key: str) -> None:
    """Remove staging folders of this key left by killed builds (their pid is gone)."""
    for stale in root.glob(f".sft-{key}-*"):
        pid_file = stale / "BUILDER_PID"
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
            continue  # a live build of the same key (another job): leave it alone
        except (OSError, ValueError):
            pass
        logger.info("removing an incomplete warm-start build: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    target = root / f"sft-{key}"
    if target.exists() and not (target / MARKER).exists():
        shutil.rmtree(target, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    for p in [*path.rglob("*"), path]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_warm_start(cfg: Config, policy_path: str, reuse: Any = None) -> Path:
    """The cached warm start for ``cfg``, built by the SFT stage on first use.

    ``policy_path``: the tiny policy to start SFT from; ``reuse``: a running
    ``actors.session.Session`` whose retrieval group SFT uses (left running).
    """
    from launch.sft import run_sft

    inputs = warm_start_inputs(cfg, policy_path)
    key = warm_start_key(inputs)
    root = Path(cfg.model.build_dir).expanduser()
    if (found := cached_warm_start(root, key)) is not None:
        print(f"warm start: reusing the cached SFT policy {found}")
        return found
    root.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(root, key)
    staging = Path(tempfile.mkdtemp(prefix=f".sft-{key}-", dir=root))
    (staging / "BUILDER_PID").write_text(str(os.getpid()))
    print(f"warm start: training the tiny policy by SFT on gold search trajectories (cached as sft-{key})")
    try:
        summary = run_sft(cfg, staging / "run", model_path=policy_path, reuse=reuse, evaluate=False)
        shutil.move(str(summary["policy"]), staging / "policy")
        shutil.copy(staging / "run" / "metrics.jsonl", staging / "policy" / "sft_metrics.jsonl")
        meta = {"key": key, "inputs": inputs, "steps": summary["steps"], "wall_s": summary["wall_s"]}
        (staging / "policy" / MARKER).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        _fsync_tree(staging / "policy")
        target = root / f"sft-{key}"
        try:
            os.replace(staging / "policy", target)  # atomic: the folder appears complete or not at all
        except OSError:
            if cached_warm_start(root, key) is None:  # not a concurrent build of the same key that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"warm start: {summary['steps']} SFT steps in {summary['wall_s']:.0f} s -> {target}")
    return target
