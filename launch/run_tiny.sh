#!/usr/bin/env bash
# The quick start on the tiny CPU preset: prepare toyworld, build the tiny policy, run the job.
#
#   bash launch/run_tiny.sh [hydra overrides...]
#
# Uses the virtual environment made by launch/setup_env.sh (VENV, default .venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${VENV:-$root/.venv}/bin/python"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 VLLM_HOST_IP=127.0.0.1  # keep local runs on loopback

if [ ! -f data/toyworld/corpus.jsonl ]; then
  "$py" -m launch.prepare_data data=toyworld "$@"
fi
# Until the StePPO trainer lands (launch.train), the quick start runs what exists end to end:
# the dataset, the tiny policy built from it, and one sampled completion from vLLM.
"$py" -m launch.build_policy "$@"
