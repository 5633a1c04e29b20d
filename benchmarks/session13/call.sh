#!/usr/bin/env bash
# A device call of session 13 (or later): the gpu tests named as arguments (tests/FILE.py::NAME), one at a time in
# the order given, within TESTS_LIMIT seconds (default 540), each test's outcome in $OUT/test-reports.txt as it
# ends; then, when PHASE is set (cold, resume or warm), a piece of issue #18's corpus benchmark
# (benchmarks/corpus/measure.sh) in whatever is left of BUDGET seconds (default 570).
set -u
start=$(date +%s)
source scripts/device_setup.sh
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
