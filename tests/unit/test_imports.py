"""``workers`` stays Ray-free (CONVENTIONS "Shape"): importing it must not import ``ray``."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_importing_workers_leaves_ray_out() -> None:
    # A fresh interpreter: this test session may already have imported ray elsewhere.
    code = ("import sys, workers, workers.types, workers.config, workers.reward; "
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
