"""launch.experiments.toyworld_learning: SFT, then both reward arms from it, results on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_experiment_runs_sft_then_both_arms_and_writes_results(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1"}
    args = [f"run_dir={tmp_path / 'runs'}", f"out={tmp_path / 'results'}", "seeds=1", "test_size=4",
            f"data.output_dir={tmp_path / 'data'}", f"model.build_dir={tmp_path / 'models'}",
            "data.toyworld.num_questions=120", "data.toyworld.num_people=60", "data.toyworld.num_films=20",
            "data.toyworld.num_companies=15", "model.tiny.num_layers=2", "sft.max_rows=32", "sft.epochs=1",
            "sft.first_search_steps=2", "sft.batch_size=16", "sft.steps_per_call=1", "sft.eval_every=0",
            "trainer.eval_size=4", "trainer.total_steps=2", "trainer.critic_warmup_steps=1", "trainer.eval_every=1",
            "trainer.batch_size=2",
            "rollout.n_samples=2", "learner.mini_batch_size=4", "learner.micro_batch_size=2", "rollout.engine=hf",
            "rollout.max_action_tokens=16", "trainer.tensorboard=false"]
    done = subprocess.run([sys.executable, "-m", "launch.experiments.toyworld_learning", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "toyworld_learning.json").read_text())
    assert results["steps"] == 2 and results["critic_warmup_steps"] == 1 and results["test_questions"] == 4
    assert results["arms"] == ["steppo", "outcome_only"]
    assert 0.0 <= results["sft"]["em"] <= 1.0 and Path(results["sft"]["policy"]).is_dir()
    for arm in ("steppo", "outcome_only"):
        (run,) = results[arm]
        assert run["seed"] == 1 and 0.0 <= run["em"] <= run["f1"] + 1e-9 <= 1.0 + 1e-9
        records = [json.loads(line) for line in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [0, 0, 1, 2]  # the warm start's numbers, the critic warmup
        assert records[1]["critic_warmup/steps"] == 1 and records[1]["critic_warmup/value_loss"] > 0
        predictions = [json.loads(line) for line in
                       (Path(run["run_dir"]) / "test_predictions.jsonl").read_text().splitlines()]
        assert len(predictions) == 4 and all(p["num_hops"] >= 2 and p["turns"] for p in predictions)
        assert sum(p["em"] for p in predictions) / 4 == pytest.approx(run["em"])
        assert (Path(run["run_dir"]) / "checkpoints" / "step_000002" / "learner" / "hf" / "config.json").is_file()
    assert len((tmp_path / "runs" / "sft_test_predictions.jsonl").read_text().splitlines()) == 4
    by_hops = results["sft"]["by_hops"]
    assert set(by_hops) <= {"2", "3", "4"} and sum(h["count"] for h in by_hops.values()) == 4
    steppo = [json.loads(line) for line in
              (Path(results["steppo"][0]["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert "reward/info_gain" in steppo[2] and "eval/f1" in steppo[0] and "eval/f1" in steppo[3]
    table = (tmp_path / "results" / "toyworld_learning.md").read_text()
    assert "SFT warm start" in table and "outcome_only" in table
    assert "after 1 critic warmup step and 2 steps of steppo" in table
    assert "Test EM by number of hops" in table
    assert (tmp_path / "results" / "toyworld_learning.png").stat().st_size > 10_000
