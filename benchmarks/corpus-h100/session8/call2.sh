#!/usr/bin/env bash
# the second device call: gpu tests of the trials compared in the reference partner (one at a time, most wanted
# first, cut off at TESTS_S), then the corpus cold and warm again, for the references' preparation
set -u
export OUT
start=$(date +%s)
budget=${BUDGET:-330}
G=tests/test_gpu.py
timeout ${TESTS_S:-45} bash scripts/gpu_check.sh tests-serial $G::test_a_kept_timed_output_made_right_after_its_call_is_refused_on_the_gpu \
  $G::test_cuda_solution_is_correct_faster_and_has_its_own_kernels $G::test_wrong_cuda_solution_is_incorrect \
  $G::test_unwritten_gpu_output_is_incorrect $G::test_pytorch_only_solution_is_flagged_no_custom_kernel \
  $G::test_an_answer_remembered_under_the_inputs_address_is_wrong_on_fresh_inputs >/dev/null 2>&1
grep "PASSED\|FAILED\|ERROR" $OUT/test-reports.txt | grep -v "^ "; tail -2 $OUT/pytest-tests-serial.log
echo "tests done at $(( $(date +%s) - start )) s"
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 OUT=$OUT/corpus
mkdir -p $OUT
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv > $OUT/clocks.txt
printf 'timeouts:\n  step_s: 15\n' > /tmp/step15.yaml
left=$(( budget - ($(date +%s) - start) ))
GENERATE_ARGS="--problems 5 --solutions 20" LIMIT=$(( left * 6 / 10 )) bash benchmarks/corpus/measure.sh cold --config /tmp/step15.yaml
LIMIT=$(( budget + 10 - ($(date +%s) - start) )) bash benchmarks/corpus/measure.sh warm --config /tmp/step15.yaml
echo "all done at $(( $(date +%s) - start )) s"
