#!/usr/bin/env bash
# Install kbench and what it needs, choosing PyTorch's build for this machine: a machine without an NVIDIA GPU
# gets the CPU build (pip would otherwise fetch a CUDA build of several GB), one with a GPU the default build.
# A torch already installed is kept. Extra arguments go to pip (e.g. ".[dev]" is installed by `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CPU_TORCH=${KBENCH_CPU_TORCH:-torch==2.13.0}   # the CPU build pinned for CI
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        "$PYTHON" -m pip install --quiet torch
    else
        "$PYTHON" -m pip install --quiet "$CPU_TORCH"
    fi
fi
"$PYTHON" -m pip install --quiet -e "${1:-.}"
