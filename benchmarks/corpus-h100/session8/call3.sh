#!/usr/bin/env bash
# the last device call of the session (little device time left): the kept-output test with its fixed fixture, then
# the corpus's cold run alone, for the references' preparation after 5986398
set -u
export OUT
start=$(date +%s)
timeout 45 bash scripts/gpu_check.sh tests-serial tests/test_gpu.py::test_a_kept_timed_output_made_right_after_its_call_is_refused_on_the_gpu >/dev/null 2>&1
grep "PASSED\|FAILED\|ERROR" $OUT/test-reports.txt | grep -v "^ "; tail -2 $OUT/pytest-tests-serial.log
echo "tests done at $(( $(date +%s) - start )) s"
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 OUT=$OUT/corpus
mkdir -p $OUT
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv > $OUT/clocks.txt
printf 'timeouts:\n  step_s: 15\n' > /tmp/step15.yaml
GENERATE_ARGS="--problems 5 --solutions 20" LIMIT=$(( ${BUDGET:-230} - ($(date +%s) - start) )) bash benchmarks/corpus/measure.sh cold --config /tmp/step15.yaml
echo "all done at $(( $(date +%s) - start )) s"
