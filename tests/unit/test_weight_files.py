"""Weight files of the object-store sync: shared memory only when it has room, and the
folders of killed processes swept."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from workers.rollout.engines import WEIGHTS_PREFIX, sweep_weight_files, weights_dir


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


def test_sweep_removes_only_the_folders_of_dead_writers(tmp_path: Path) -> None:
    dead = tmp_path / f"{WEIGHTS_PREFIX}{_dead_pid()}-abc"
    mine = tmp_path / f"{WEIGHTS_PREFIX}{os.getpid()}-xyz"
    other = tmp_path / "someone-elses-folder"
    for folder in (dead, mine, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 16)
    assert sweep_weight_files(str(tmp_path)) == [dead.name]
    assert not dead.exists() and mine.exists() and other.exists()


def test_weights_go_to_shared_memory_only_when_the_file_fits(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    assert weights_dir(1024, shm=str(tmp_path)) == str(tmp_path)
    assert weights_dir(free, shm=str(tmp_path)) is None  # no quarter to spare: the disk's temp dir
    assert weights_dir(1024, shm=str(tmp_path / "absent")) is None


def test_choosing_the_folder_sweeps_leftovers(tmp_path: Path) -> None:
    dead = tmp_path / f"{WEIGHTS_PREFIX}{_dead_pid()}-left"
    dead.mkdir()
    weights_dir(1024, shm=str(tmp_path))
    assert not dead.exists()
