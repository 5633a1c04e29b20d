#!/usr/bin/env bash
# A device call of session 13 (or later): the gpu tests named as arguments (tests/FILE.py::NAME), one at a time in
# the order given, within TESTS_LIMIT seconds (default 540), each test's outcome in $OUT/test-reports.txt as it
# ends; then, when PHASE is set (cold, resume or warm), a piece of issue #18's corpus benchmark
# (benchmarks/corpus/measure.sh) in whatever is left of BUDGET seconds (default 570). VERIFY_100M=1 first verifies
# the example problem's solutions at 100.7M output elements (batch 24576 x 4096), for issue #18's bound on a job's
# overhead beyond its build and timing at that size: each job's stages and run steps in $OUT/verify-100m.jsonl.
set -u
start=$(date +%s)
source scripts/device_setup.sh
if [ -n "${VERIFY_100M:-}" ]; then
    timeout 300 kbench verify example_scale_bias_relu6 --device cuda --set batch_size=24576 --json \
        >"$OUT/verify-100m.jsonl" 2>"$OUT/verify-100m.log"
    echo "verify at 100M: exit $? at $(( $(date +%s) - start )) s"
fi
if [ $# -gt 0 ]; then
    timeout "${TESTS_LIMIT:-540}" bash scripts/gpu_check.sh tests-serial "$@" >/dev/null 2>&1
    grep -E "^(PASSED|FAILED|ERROR)|^E " "$OUT/test-reports.txt" | cut -c1-300 | head -60
    tail -3 "$OUT/pytest-tests-serial.log"
    echo "tests done at $(( $(date +%s) - start )) s"
fi
if [ -n "${PHASE:-}" ]; then
    LIMIT=$(( ${BUDGET:-570} - ($(date +%s) - start) )) bash benchmarks/corpus/measure.sh "$PHASE"
fi
echo "all done at $(( $(date +%s) - start )) s"
