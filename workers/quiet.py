"""Known library noise, lowered at its source: the driver and every actor process.

Runs in the driver and in every Ray worker. Without it a quick-start run prints, per
step, vLLM's notes about missing Triton, tcmalloc/LD_PRELOAD and NUMA binding, its
``RotaryEmbedding: Failed to load weights`` after each weight load, transformers'
progress bars and deprecation FutureWarnings. The libraries read these variables when
they start, so the driver puts them in the environment of the actors it starts
(``QUIET_ENV`` through Ray's ``runtime_env``) and applies them to itself
(``quiet_libraries``). Errors still show. ``trainer.verbose=true`` leaves everything on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

QUIET_FLAG = "STEPSEARCH_QUIET"
"""Set to 1 in processes where known noise is hidden."""

QUIET_ENV = {
    QUIET_FLAG: "1",
    "VLLM_LOGGING_LEVEL": "ERROR",  # vLLM's per-start and per-weight-load warnings
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # "Loading weights" / "Writing model shards" bars
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # c10 warnings such as vLLM's NUMA-binding note
}
"""Environment of quiet actor processes (and of the driver)."""

NOISY_LOGGERS = ("vllm", "transformers", "deepspeed", "DeepSpeed", "torch.distributed", "filelock", "urllib3",
                 "torch._library.triton")  # "Triton not available" on every CPU custom-op registration


VLLM_LOGGING_CONFIG = Path(__file__).with_name("vllm_logging.json")
"""vLLM's logging in quiet processes (``VLLM_LOGGING_CONFIG_PATH``): errors only, and torch's
"Triton not available" lowered. vLLM applies it in the engine-core and worker processes it
spawns, which Ray's setup hook does not reach; each process points at its own copy."""


def is_quiet() -> bool:
    return os.environ.get(QUIET_FLAG) == "1"


def quiet_libraries(quiet: bool = True) -> dict[str, str]:
    """Lower known library noise in this process and return the environment for its actors
    (empty when ``quiet`` is False)."""
    if not quiet:
        return {}
    os.environ.update(QUIET_ENV)
    os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", str(VLLM_LOGGING_CONFIG))
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    return dict(QUIET_ENV)


def quiet_worker() -> None:
    """Ray's ``worker_process_setup_hook`` for quiet jobs: runs first in every actor process,
    before any library logs (vLLM warns about Triton while it is still being imported)."""
    quiet_libraries(is_quiet())


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Swallow what a library prints to stdout (e.g. DeepSpeed's op build notice) in quiet
    processes; the text goes to the debug log instead."""
    if not is_quiet():
        yield
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    if text := buffer.getvalue().strip():
        logging.getLogger(__name__).debug("library output: %s", text)
