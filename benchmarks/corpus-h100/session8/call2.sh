#!/usr/bin/env bash
# the second device call: gpu tests of the trials compared in the reference partner, one at a time, most wanted first
set -u
G=tests/test_gpu.py
timeout ${LIMIT:-300} bash scripts/gpu_check.sh tests-serial $G::test_a_kept_timed_output_made_right_after_its_call_is_refused_on_the_gpu \
  $G::test_cuda_solution_is_correct_faster_and_has_its_own_kernels $G::test_wrong_cuda_solution_is_incorrect \
  $G::test_unwritten_gpu_output_is_incorrect $G::test_an_answer_remembered_under_the_inputs_address_is_wrong_on_fresh_inputs \
  $G::test_freed_reference_memory_no_longer_holds_the_answer $G::test_out_of_memory_is_a_runtime_error \
  $G::test_pytorch_only_solution_is_flagged_no_custom_kernel $G::test_gpu_faults_are_judged_and_the_gpu_stays_usable \
  $G::test_side_stream_work_is_rejected >/dev/null 2>&1
cat $OUT/test-reports.txt | grep -v "^ " | grep "PASSED\|FAILED\|ERROR" ; tail -3 $OUT/pytest-tests-serial.log
