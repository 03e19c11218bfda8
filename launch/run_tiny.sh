#!/usr/bin/env bash
# The quick start: a short StePPO training run on the tiny CPU preset (toyworld, tiny policy).
#
#   bash launch/run_tiny.sh [hydra overrides...]
#
# Uses the virtual environment made by launch/setup_env.sh (VENV, default .venv). The first
# run generates data/toyworld and builds the tiny policy (cached under ~/.cache/stepsearch).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${VENV:-$root/.venv}/bin/python"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 VLLM_HOST_IP=127.0.0.1  # keep local runs on loopback
exec "$py" -m launch.train "$@"
