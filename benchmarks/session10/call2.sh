#!/usr/bin/env bash
# device call 2: CUDA under the confinement (sandbox_probe.py), the confined gpu test again with the own /proc
# folder writable, and a torch.compile solution confined, then the other gpu tests (or those named:
# call2.sh [test ids]), one at a time, each outcome in $OUT/test-reports.txt as it ends
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
# the rest: the test ids given, else every other gpu test in file order
if [ $# -gt 0 ]; then rest=("$@"); else
    rest=(tests/test_handoff.py tests/test_gpu.py
          --deselect tests/test_gpu.py::test_confined_cuda_and_triton_solutions_build_run_and_plant_nothing
          --deselect tests/test_gpu.py::test_an_honest_torch_compile_solution_is_correct_when_confined); fi
timeout $(( ${LIMIT:-540} - ($(date +%s) - start) )) bash scripts/gpu_check.sh tests-serial "${rest[@]}" >/dev/null 2>&1
cat $OUT/test-reports.txt | grep -E "^(PASSED|FAILED|ERROR)"
tail -3 $OUT/pytest-tests-serial.log
echo "all done at $(( $(date +%s) - start )) s"
