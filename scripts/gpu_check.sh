#!/usr/bin/env bash
# One device call: install kbench, run the tests (GPU ones included), then the daily commands on CUDA.
# Logs and the run directory go to $OUT (the device tool brings them back). Needs .whl carried along when
# the machine lacks pydantic (see README, "Running on the GPU machine").
set -uo pipefail
OUT=${OUT:-/tmp/kbench-gpu-check}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1 COLUMNS=160
if [ -d .whl ] && ! python3 -c "import pydantic" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
{ nvidia-smi; nvidia-smi -q -d CLOCK; } >"$OUT/nvidia-smi.txt" 2>&1

# Phases, so that each fits in one device call: `tests` runs the gpu-marked tests, four at a time (their CUDA
# builds then overlap); `commands` runs the daily commands on CUDA; `all` (default) runs every test, then the
# commands.
PHASE=${1:-all}
case "$PHASE" in
    tests) python3 -m pytest -q -rs --durations=10 -m gpu -n 4 2>&1 | tee "$OUT/pytest.log" ;;
    all) python3 -m pytest -q -rs --durations=10 2>&1 | tee "$OUT/pytest.log" ;;
    commands) ;;
    *) echo "usage: $0 [all|tests|commands]" >&2; exit 2 ;;
esac
[ "$PHASE" = tests ] && exit 0
{
    echo "== kbench verify example_scale_bias_relu6 --device cuda"
    kbench verify example_scale_bias_relu6 --device cuda; echo "exit=$?"
    echo "== kbench verify example_scale_bias_relu6 -s tests/fixtures/cuda/wrong_relu6.py"
    kbench verify example_scale_bias_relu6 --device cuda -s tests/fixtures/cuda/wrong_relu6.py; echo "exit=$?"
    echo "== kbench lint --all"
    kbench lint --all; echo "exit=$?"
    echo "== kbench calibrate --device cuda"
    kbench calibrate --device cuda; echo "exit=$?"
    echo "== kbench bench --all"
    kbench bench --all --results-dir "$OUT/results"; echo "exit=$?"
    kbench report --results-dir "$OUT/results" --csv "$OUT/report.csv"; echo "exit=$?"
} 2>&1 | tee "$OUT/commands.log"
