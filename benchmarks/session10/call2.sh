#!/usr/bin/env bash
# device call 2: CUDA under the confinement (sandbox_probe.py), the confined gpu test again with the own /proc
# folder writable, and a torch.compile solution confined, then the gpu tests call 1 did not reach
set -u
start=$(date +%s)
export TORCH_CUDA_ARCH_LIST=9.0 KBENCH_CACHE_DIR=/tmp/kbench-cache PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
timeout 150 python3 benchmarks/session10/sandbox_probe.py 2>&1 | tee $OUT/sandbox_probe.txt
echo "probe done at $(( $(date +%s) - start )) s"
timeout 260 bash scripts/gpu_check.sh tests-serial tests/test_gpu.py::test_confined_cuda_and_triton_solutions_build_run_and_plant_nothing tests/test_gpu.py::test_an_honest_torch_compile_solution_is_correct_when_confined >/dev/null 2>&1
mv $OUT/pytest-tests-serial.log $OUT/pytest-confined.log; mv $OUT/test-reports.txt $OUT/test-reports-confined.txt
grep -E "^(PASSED|FAILED|ERROR)|^E " $OUT/test-reports-confined.txt | cut -c1-400 | head -20
echo "confined done at $(( $(date +%s) - start )) s"
rest=(tests/test_gpu.py::test_a_kept_timed_output_made_right_after_its_call_is_refused_on_the_gpu
      tests/test_gpu.py::test_cuda_settings_changed_by_the_solution_are_recorded_and_harm_no_one
      "tests/test_gpu.py::test_cuda_solution_is_timed_in_each_timing_mode"
      tests/test_gpu.py::test_a_solution_that_cannot_be_captured_is_timed_with_events_and_says_why
      tests/test_gpu.py::test_side_stream_work_is_still_rejected_in_graph_mode
      tests/test_gpu.py::test_kernel_time_agrees_with_events_on_a_long_matrix_product
      tests/test_gpu.py::test_graph_mode_checks_the_outputs_of_its_replays
      tests/test_gpu.py::test_calibrate_compares_events_and_kernel_timing)
timeout $(( ${LIMIT:-540} - ($(date +%s) - start) )) bash scripts/gpu_check.sh tests-serial "${rest[@]}" >/dev/null 2>&1
cat $OUT/test-reports.txt | grep -E "^(PASSED|FAILED|ERROR)"
tail -3 $OUT/pytest-tests-serial.log
echo "all done at $(( $(date +%s) - start )) s"
