#!/usr/bin/env bash
# a device call of session 12: with test names as arguments, whether CUDA starts in the confined worker now
# (probe.py's `none` and `full`) and those gpu tests one at a time; then a piece of issue #18's corpus benchmark
# (80 problems, 200 solutions): `measure.sh $PHASE` (cold, resume or warm; default cold) in whatever is left of
# BUDGET seconds (default 570).
set -u
start=$(date +%s)
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
nvidia-smi -q -d CLOCK,POWER,PERFORMANCE >"$OUT/clocks-$(date +%s).txt" 2>&1
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
if [ $# -gt 0 ]; then
    timeout 60 python3 benchmarks/session11/probe.py none full 2>&1 | tee "$OUT/probe.txt" | cut -c1-200
    tests=(); for name in "$@"; do tests+=("tests/test_gpu.py::$name"); done
    timeout "${TESTS_LIMIT:-240}" bash scripts/gpu_check.sh tests-serial "${tests[@]}" >/dev/null 2>&1
    grep -E "^(PASSED|FAILED|ERROR)|^E " "$OUT/test-reports.txt" | cut -c1-300 | head -40
    tail -3 "$OUT/pytest-tests-serial.log"
    echo "tests done at $(( $(date +%s) - start )) s"
fi
LIMIT=$(( ${BUDGET:-570} - ($(date +%s) - start) )) bash benchmarks/corpus/measure.sh "${PHASE:-cold}"
echo "all done at $(( $(date +%s) - start )) s"
