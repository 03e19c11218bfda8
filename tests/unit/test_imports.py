"""The Ray-free packages stay Ray-free (CONVENTIONS "Shape"): importing any module of
``workers`` or ``retrieval_service`` must not import ``ray``."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

from tests.conftest import ROOT

RAY_FREE = ("workers", "retrieval_service")


def ray_free_modules() -> list[str]:
    """Every module of the Ray-free packages, found on disk (a new one is covered at once)."""
    names = list(RAY_FREE)
    for package in RAY_FREE:
        names += [m.name for m in pkgutil.walk_packages([str(ROOT / package.replace(".", "/"))], f"{package}.")]
    return sorted(names)


def test_the_module_list_finds_nested_packages() -> None:
    found = ray_free_modules()
    assert {"workers.learner.ppo", "workers.data.renaming", "retrieval_service.http"} <= set(found)


def test_importing_every_ray_free_module_leaves_ray_out() -> None:
    # A fresh interpreter: this test session may already have imported ray elsewhere.
    code = ("import importlib, sys\n"
            f"for name in {ray_free_modules()!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'ray' not in sys.modules, (name, sorted(m for m in sys.modules if m.startswith('ray')))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
