#!/usr/bin/env bash
# The quick start: a short StePPO run on the tiny CPU preset (toyworld, tiny policy), from a
# supervised warm start, with validation EM measured before step 1 and at the end.
#
#   bash launch/run_tiny.sh [hydra overrides...]
#
# Uses the virtual environment made by launch/setup_env.sh (VENV, default .venv). The first
# run generates data/quickstart, builds the tiny policy and its SFT warm start (both cached
# under ~/.cache/stepsearch/models); later runs reuse them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${VENV:-$root/.venv}/bin/python"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 VLLM_HOST_IP=127.0.0.1  # keep local runs on loopback
exec "$py" -m launch.train "$@"
