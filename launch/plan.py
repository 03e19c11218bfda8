"""Plan a job's resources before starting it: placement and GPU memory per GPU.

    python -m launch.plan +experiment=stepsearch_3b plan.nodes=1 plan.gpus_per_node=8 plan.gpu_memory_gib=80
    python -m launch.plan +experiment=stepsearch_7b plan.gpus_per_node=4 plan.gpu_memory_gib=24   # refused

Takes the same overrides as ``launch.train`` plus ``plan.nodes`` (1), ``plan.gpus_per_node``
(8), ``plan.cpus_per_node`` (64) and ``plan.gpu_memory_gib`` (80; 0 checks resources only). Prints each actor group
(count, GPUs and CPUs per actor, node:bundle), the memory estimate (docs/cluster.md), and
as its last line one JSON object ``{"fits", "nodes", "gpus", "peak_gpu_memory_gib",
"reason"}``. Exit code 0 when the job fits, 2 when it does not (the reason names the
setting to change) or the config is wrong. Starts nothing: no Ray, no GPU needed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from launch.cli import run_tool, split_tool_args
from workers.config import Config, ConfigError
from workers.plan import ClusterShape, format_plan, make_plan

PLAN_ARGS = {"plan.nodes": 1, "plan.gpus_per_node": 8, "plan.cpus_per_node": 64, "plan.gpu_memory_gib": 80.0}
"""The tool's own arguments and their defaults: one node of 8 GPUs with 80 GiB each."""


def cluster_shape(args: dict[str, str]) -> ClusterShape:
    """The ``plan.*`` arguments as a cluster of identical nodes."""
    values: dict[str, float] = {}
    for name, default in PLAN_ARGS.items():
        raw = args.get(name, str(default))
        try:
            values[name] = float(raw)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {raw!r}") from None
        if values[name] < 0 or (name == "plan.nodes" and (values[name] < 1 or values[name] != int(values[name]))):
            raise ConfigError(name, f"must be {'a whole number >= 1' if name == 'plan.nodes' else '>= 0'}, got {raw!r}")
    return ClusterShape.uniform(int(values["plan.nodes"]), values["plan.gpus_per_node"],
                                values["plan.cpus_per_node"], values["plan.gpu_memory_gib"] or None)


def cli(argv: Sequence[str] | None = None) -> int:
    """Parse, plan, print; exit code 0 (fits) or 2 (does not fit, or a config error)."""
    tool_args, overrides = split_tool_args(sys.argv[1:] if argv is None else argv, PLAN_ARGS)

    def main(cfg: Config) -> int:
        plan = make_plan(cfg, cluster_shape(tool_args))
        print(format_plan(cfg, plan))
        print(json.dumps(plan.summary()))
        return 0 if plan.fits else 2

    return run_tool(main, overrides, usage=__doc__ or "")


if __name__ == "__main__":
    sys.exit(cli())
