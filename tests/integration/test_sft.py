"""launch.sft: the warm start lowers the loss on gold trajectories and exports a loadable policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _run_sft(tmp_path: Path, *overrides: str) -> list[dict]:
    """``launch.sft`` on a small toyworld; its metrics records."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1"}
    args = ["trainer=tiny", f"data.output_dir={tmp_path / 'data'}", f"model.build_dir={tmp_path / 'models'}",
            f"trainer.run_dir={tmp_path / 'sft'}", "data.toyworld.num_questions=120", "data.toyworld.num_people=60",
            "data.toyworld.num_films=20", "data.toyworld.num_companies=15", "model.tiny.num_layers=2",
            "sft.max_rows=32", "sft.batch_size=16", "sft.steps_per_call=1", "sft.lr=3e-3",
            "sft.warmup_steps=0", "sft.eval_every=0", "sft.first_search_steps=0", "sft.rename_entities=false",
            "sft.lr_schedule=cosine", "trainer.eval_size=4", "rollout.engine=hf",
            "rollout.max_action_tokens=16", "trainer.tensorboard=false", *overrides]
    done = subprocess.run([sys.executable, "-m", "launch.sft", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]


def test_sft_lowers_the_loss_and_exports_a_policy(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    records = _run_sft(tmp_path, "sft.epochs=4")
    losses = [r["sft/loss"] for r in records]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5, losses
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    policy = Path(summary["policy"])
    assert (policy / "tokenizer.json").exists() and "eval/em" in summary["eval"]
    trained = load_file(next(policy.glob("*.safetensors")))
    initial_dir = next((tmp_path / "models").glob("tiny-*"))
    initial = load_file(initial_dir / "model.safetensors")
    assert any(not np.array_equal(trained[k], initial[k]) for k in initial if k in trained)

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(policy).config.model_type == "qwen2"


def test_first_search_stage_runs_before_whole_renamed_trajectories(tmp_path: Path) -> None:
    records = _run_sft(tmp_path, "sft.epochs=1", "sft.first_search_steps=3", "sft.rename_entities=true")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["sft/first_search_only"] for r in records] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert [r["sft/epoch"] for r in records[3:]] == [0.5, 1.0]
    first, whole = (max(r["sft/response_tokens_per_step"] for r in part) for part in (records[:3], records[3:]))
    assert 0 < first * 4 < whole, (first, whole)  # one search against searches, documents and the answer
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["steps"] == 5 and Path(summary["policy"]).is_dir()
    assert (tmp_path / "sft" / "plots.png").stat().st_size > 10_000  # loss and validation panels
