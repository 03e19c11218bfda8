"""Connecting to Ray: an existing cluster, or a local one bound to loopback.

Runs in the driver (and in the test session). DESIGN.md 5: on Linux a local Ray cluster
binds to the machine's network address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is
set before it starts; vLLM likewise needs ``VLLM_HOST_IP``. Real clusters set neither.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from workers.config import ClusterConfig
from workers.quiet import quiet_libraries

logger = logging.getLogger(__name__)

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1"}
"""Environment that keeps a local cluster, its workers and vLLM on 127.0.0.1."""


def loopback_env() -> dict[str, str]:
    """Set the loopback variables in this process and return them (for runtime_env too)."""
    os.environ.update(LOOPBACK_ENV)
    return dict(LOOPBACK_ENV)


def _job_env_vars() -> dict[str, str]:
    """Variables a submitted job's runtime_env sets (Ray refuses to set one twice)."""
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    try:
        return dict(json.loads(raw).get("runtime_env", {}).get("env_vars", {})) if raw else {}
    except (ValueError, AttributeError):
        return {}


def init_ray(cfg: ClusterConfig, quiet: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Connect to ``cfg.address`` / ``RAY_ADDRESS``, or start a local cluster.

    Returns the cluster's resources. Without an address this always starts a new local
    cluster, even when another one runs on the machine (``ray.init()`` alone would join
    that one). A local cluster is bound to loopback when ``cfg.loopback`` is set, and its
    workers inherit the same environment. ``quiet``: known library noise is lowered in
    this process and in every actor (``workers.quiet``).
    """
    if ray.is_initialized():
        return ray.cluster_resources()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    quiet_env = {k: v for k, v in quiet_libraries(quiet).items() if k not in _job_env_vars()}
    kwargs.setdefault("logging_level", "ERROR" if quiet else "WARNING")
    options: dict[str, Any] = {"namespace": cfg.namespace, "log_to_driver": True, **kwargs}
    if quiet_env:
        runtime_env = dict(options.pop("runtime_env", None) or {})
        runtime_env["env_vars"] = {**quiet_env, **runtime_env.get("env_vars", {})}
        runtime_env.setdefault("worker_process_setup_hook", "workers.quiet.quiet_worker")
        options["runtime_env"] = runtime_env
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, **options)
    else:
        env_vars = loopback_env() if cfg.loopback else {}
        if cfg.loopback:
            # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is first imported
            # (ray_constants.ENABLE_RAY_CLUSTER). Entry points export it before that; when ray
            # was imported earlier, set the value it would have read so the node binds to
            # 127.0.0.1 (DESIGN.md 5). Workers inherit the variable from the environment.
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        runtime_env = dict(options.pop("runtime_env", None) or {})
        runtime_env["env_vars"] = {**env_vars, **runtime_env.get("env_vars", {})}
        ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=False,
                 runtime_env=runtime_env, **options)
        logger.info("started a local Ray cluster (loopback=%s)", cfg.loopback)
    return ray.cluster_resources()
