"""launch.experiments.musique_pipeline: the real MuSiQue sample through every stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.support import ROOT, base_env

pytestmark = pytest.mark.e2e


def test_musique_sample_goes_through_convert_index_sft_steppo_and_evaluate(shared_data: Path,
                                                                          tmp_path: Path) -> None:
    work = tmp_path / "musique"
    args = [f"input={shared_data / 'musique_train100.json'}", f"work_dir={work}", "sft_epochs=0.2",
            "train_steps=1", "limit=2", f"model.build_dir={tmp_path / 'models'}", "model.tiny.num_layers=2",
            "rollout.engine=hf", "rollout.max_action_tokens=16", "trainer.batch_size=2", "trainer.eval_size=2",
            "learner.mini_batch_size=2", "learner.micro_batch_size=2", "trainer.tensorboard=false"]
    done = subprocess.run([sys.executable, "-m", "launch.experiments.musique_pipeline", *args], cwd=ROOT,
                          env=base_env(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((work / "musique_pipeline.json").read_text())
    assert results["rows"] == {"train": 82, "validation": 7, "test": 11}
    assert results["corpus_passages"] == 1890
    assert json.loads((work / "index" / "manifest.json").read_text())["num_passages"] == 1890
    assert results["steppo"]["steps"] == 1 and results["sft"]["steps"] >= 1
    for stage in ("sft", "steppo"):
        test = results[stage]["test"]
        assert test["questions"] == 2 and 0.0 <= test["eval/em"] <= test["eval/f1"] + 1e-9 <= 1.0 + 1e-9
        assert len((work / f"predictions-test-{stage}.jsonl").read_text().splitlines()) == 2
    assert set(results["wall_s"]) == {"prepare", "index", "sft", "steppo", "evaluate_sft", "evaluate_steppo"}
    assert "=== results (test split)" in done.stdout and "$ python -m launch.sft" in done.stdout


def test_musique_pipeline_names_a_missing_input(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "launch.experiments.musique_pipeline",
                           f"input={tmp_path / 'nope.json'}", f"work_dir={tmp_path / 'w'}"], cwd=ROOT,
                          env=base_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "input: no such file" in done.stderr
