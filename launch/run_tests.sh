#!/usr/bin/env bash
# Set up the environment (launch/setup_env.sh), then lint, type-check and run every test tier.
#
#   bash launch/run_tests.sh                 # everything: unit, integration, rehearsal, e2e
#   bash launch/run_tests.sh -m rehearsal    # the GPU topology on a simulated 2-node x 4-GPU cluster
#   bash launch/run_tests.sh -m "not integration and not e2e"   # extra arguments go to pytest
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash launch/setup_env.sh
venv="${VENV:-$root/.venv}"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 VLLM_HOST_IP=127.0.0.1  # local clusters and engines on loopback

echo "[tests] ruff"
"$venv/bin/ruff" check .
echo "[tests] mypy (workers, retrieval_service)"
"$venv/bin/mypy" workers retrieval_service
echo "[tests] pytest"
"$venv/bin/python" -m pytest "$@"
