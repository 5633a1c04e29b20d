#!/usr/bin/env bash
# device call of session 11: which part of the confinement stops CUDA (probe.py), then the gpu tests that
# session 11's first call did not reach, one at a time, each outcome in $OUT/test-reports.txt as it ends
set -u
start=$(date +%s)
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
timeout 200 python3 benchmarks/session11/probe.py 2>&1 | tee $OUT/probe.txt | grep -v "^DENIED" | cut -c1-200
grep "^DENIED" $OUT/probe.txt | sort | uniq -c | sort -rn | head -30
echo "probe done at $(( $(date +%s) - start )) s"
tests=(); for name in "$@"; do tests+=("tests/test_gpu.py::$name"); done
timeout $(( ${LIMIT:-540} - ($(date +%s) - start) )) bash scripts/gpu_check.sh tests-serial "${tests[@]}" >/dev/null 2>&1
grep -E "^(PASSED|FAILED|ERROR)|^E " $OUT/test-reports.txt | cut -c1-300 | head -60
tail -3 $OUT/pytest-tests-serial.log
echo "all done at $(( $(date +%s) - start )) s"
