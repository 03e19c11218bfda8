"""Shared command-line plumbing for the ``python -m launch.X key=value ...`` tools.

Runs in the user's process. Tools take Hydra override strings (``data=musique
data.input_path=FILE``) composed with the compose API: no output directory is created
and no working directory changes. ``launch.train`` uses ``@hydra.main`` instead, for
multirun sweeps.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from launch.config import load_config
from workers.config import Config, ConfigError

logger = logging.getLogger(__name__)


def setup_logging(level: int = logging.INFO) -> None:
    """One-line log records on stderr, the same for every tool."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def split_tool_args(argv: Sequence[str], names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Separate a tool's own top-level ``name=value`` arguments from the Hydra overrides.

    Only the given ``names`` are taken (the last occurrence wins; the value keeps any
    further ``=``); everything else, unknown ``key=value`` pairs included, stays in the
    overrides in order, so Hydra still reports a mistyped key.

    >>> split_tool_args(["checkpoint=ckpt", "rollout.engine=hf", "question=a=b?"], ["checkpoint", "question"])
    ({'checkpoint': 'ckpt', 'question': 'a=b?'}, ['rollout.engine=hf'])
    """
    wanted = set(names)
    tool_args: dict[str, str] = {}
    overrides: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in wanted:
            tool_args[key] = value
        else:
            overrides.append(arg)
    return tool_args, overrides


def run_tool(main: Callable[[Config], int | None], argv: Sequence[str] | None = None,
             usage: str = "") -> int:
    """Compose the config from ``argv`` overrides, run ``main`` and return an exit code.

    Config mistakes (unknown preset or key, bad value) print one line naming the field
    and exit with 2 before any work starts.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage or (main.__doc__ or "").strip())
        print("\nArguments are Hydra overrides (key=value, group=preset); presets live in conf/.")
        return 0
    setup_logging()
    try:
        cfg = load_config(args)
    except (ConfigError, HydraException, OmegaConfBaseException) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        code = main(cfg)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)
