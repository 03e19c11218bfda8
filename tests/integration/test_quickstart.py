"""The quick start's shape, shrunk: a warm start built by SFT once and then reused, the
start and the end evaluated, the closing table, quiet logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHRUNK = ["trainer=quickstart", "trainer.total_steps=2", "trainer.critic_warmup_steps=1", "trainer.batch_size=2",
          "trainer.eval_size=4", "learner.mini_batch_size=4", "learner.micro_batch_size=2",
          "rollout.engine=hf", "rollout.max_action_tokens=16", "retrieval.topk=2", "model.tiny.vocab_size=800",
          "model.tiny.num_layers=2",
          "sft.first_search_steps=2", "sft.epochs=0.5", "sft.batch_size=8", "sft.micro_batch_size=8",
          "data.toyworld.num_questions=80", "data.toyworld.num_people=60", "data.toyworld.num_films=20",
          "data.toyworld.num_companies=15", "trainer.tensorboard=false"]
NOISE = ("Triton", "LD_PRELOAD", "FutureWarning", "Failed to load weights", "core_worker.cc", "Loading weights")


def _train(root: Path, run: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1"}
    cmd = [sys.executable, "-m", "launch.train", *SHRUNK, f"data.output_dir={root / 'data'}",
           f"model.build_dir={root / 'models'}", f"trainer.run_dir={root / run}", *extra]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_the_warm_start_is_built_once_then_reused_and_the_run_reports_start_and_end(tmp_path: Path) -> None:
    first = _train(tmp_path, "run1")
    assert "warm start: training the tiny policy by SFT" in first.stdout
    warm = [p for p in (tmp_path / "models").glob("sft-*") if p.is_dir()]
    assert len(warm) == 1 and (warm[0] / "WARM_START.json").exists() and (warm[0] / "config.json").exists()
    assert not list((tmp_path / "models").glob(".sft-*"))  # no staging left behind

    summary = json.loads((tmp_path / "run1" / "summary.json").read_text())
    assert summary["model_path"] == str(warm[0])
    assert set(summary["eval_start"]) == set(summary["eval"]) and "eval/em" in summary["eval_start"]
    step0 = [json.loads(line) for line in (tmp_path / "run1" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["step"] == 0]
    assert len(step0) == 1 and "eval/em" in step0[0] and "critic_warmup/steps" in step0[0]
    assert "validation EM" in first.stdout and "start" in first.stdout and "change" in first.stdout
    assert any(line.startswith(("StePPO raised", "Validation EM")) for line in first.stdout.splitlines())
    output = first.stdout + first.stderr
    assert not [n for n in NOISE if n in output], [line for line in output.splitlines()
                                                   if any(n in line for n in NOISE)][:5]

    second = _train(tmp_path, "run2", "trainer.total_steps=1", "trainer.critic_warmup_steps=0")
    assert f"warm start: reusing the cached SFT policy {warm[0]}" in second.stdout
    assert "warm start: training" not in second.stdout
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["model_path"] == str(warm[0])
