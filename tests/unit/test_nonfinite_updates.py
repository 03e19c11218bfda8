"""Non-finite updates are skipped, counted, and stop the run after N in a row.

The DeepSpeed cases run a real DeepSpeed engine (CPU accelerator, one rank over gloo) in a
child process, so its process group stays out of the test session.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.learner_batches import make_batch, make_tiny_model
from tests.unit.test_learner_engine import tiny_cfg
from workers.learner.data import PPOBatch
from workers.learner.worker import SKIPPED_UPDATES, LearnerWorker, NonFiniteUpdates

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, socket, sys
from pathlib import Path
import numpy as np
from tests.support.learner_batches import make_batch, make_tiny_model
from tests.unit.test_learner_engine import tiny_cfg
from tests.unit.test_nonfinite_updates import run_sequence
from workers.learner.worker import LearnerWorker

out = Path(sys.argv[1])
cfg = tiny_cfg(engine="deepspeed", zero_stage=int(sys.argv[2]), kl_coef=0.0, max_nonfinite_updates=2)
worker = LearnerWorker(cfg, make_tiny_model(out / "tiny"))
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
worker.init_distributed(0, 1, "127.0.0.1", port, str(out / "store"))
state = lambda: len(worker.policy.engine.basic_optimizer.state)
print("RESULT " + json.dumps(run_sequence(worker, state)))
"""


def _targets(worker: LearnerWorker, finite: bool) -> tuple[object, PPOBatch]:
    traj, _ = make_batch()
    old = worker.compute(traj)["old_logprobs"]
    mask = traj.action_mask.astype(np.float32)
    advantages = mask.copy() if finite else np.where(mask > 0, np.nan, 0.0).astype(np.float32)
    return traj, PPOBatch(advantages=advantages, returns=mask.copy(), old_logprobs=old,
                          ref_logprobs=None, old_values=None, stats={})


def run_sequence(worker: LearnerWorker, optimizer_state: object) -> dict:
    """bad, good, bad, bad updates (``max_nonfinite_updates=2``, one optimizer step each):
    what the parameters, the optimizer state and the metrics did at each."""
    traj, bad = _targets(worker, finite=False)
    _, good = _targets(worker, finite=True)
    p0 = worker.parameters_vector()
    m1 = worker.ppo_update(traj, bad)
    p1, s1 = worker.parameters_vector(), optimizer_state()  # type: ignore[operator]
    m2 = worker.ppo_update(traj, good)
    p2, s2 = worker.parameters_vector(), optimizer_state()  # type: ignore[operator]
    m3 = worker.ppo_update(traj, bad)
    p3 = worker.parameters_vector()
    try:
        worker.ppo_update(traj, bad)
        stopped = ""
    except NonFiniteUpdates as exc:
        stopped = str(exc)
    return {"skipped": [m1[SKIPPED_UPDATES], m2[SKIPPED_UPDATES], m3[SKIPPED_UPDATES]],
            "bad_unchanged": bool(np.array_equal(p0, p1) and np.array_equal(p2, p3)),
            "good_moved": bool(not np.allclose(p1, p2)), "state_after_skip": s1, "state_after_good": s2,
            "finite_metrics": bool(all(np.isfinite(v) for m in (m1, m2, m3) for v in m.values())),
            "stopped": stopped, "in_row": worker.nonfinite_in_row}


def _check(result: dict) -> None:
    assert result["skipped"] == [1.0, 0.0, 1.0]
    assert result["bad_unchanged"] and result["good_moved"]
    assert result["state_after_skip"] == 0 and result["state_after_good"] > 0  # Adam never saw the NaN step
    assert result["finite_metrics"]
    assert "2 optimizer steps in a row" in result["stopped"] and "learner.max_nonfinite_updates=2" in result["stopped"]


def test_torch_engine_skips_nonfinite_steps_and_stops_after_n(tmp_path: Path) -> None:
    worker = LearnerWorker(tiny_cfg(kl_coef=0.0, max_nonfinite_updates=2), make_tiny_model(tmp_path / "tiny"))
    worker.init_distributed()
    assert worker.policy is not None
    optimizer = worker.policy.optimizer  # type: ignore[attr-defined]
    _check(run_sequence(worker, lambda: len(optimizer.state)))


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_deepspeed_engine_skips_nonfinite_steps_and_stops_after_n(tmp_path: Path, zero_stage: int) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(zero_stage)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "DS_ACCELERATOR": "cpu",
                               "OMP_NUM_THREADS": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    _check(json.loads(lines[-1].removeprefix("RESULT ")))
