#!/usr/bin/env bash
# device call 3 of session 11: CUDA under the confinement with its own /proc folder truncatable (probe.py none full),
# then the confined gpu tests
set -u
start=$(date +%s)
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site; fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
timeout 60 python3 benchmarks/session11/probe.py none full 2>&1 | tee $OUT/probe.txt | cut -c1-200
echo "probe done at $(( $(date +%s) - start )) s"
timeout $(( ${LIMIT:-170} - ($(date +%s) - start) )) bash scripts/gpu_check.sh tests-serial \
    tests/test_gpu.py::test_confined_cuda_and_triton_solutions_build_run_and_plant_nothing \
    tests/test_gpu.py::test_an_honest_torch_compile_solution_is_correct_when_confined >/dev/null 2>&1
grep -E "^(PASSED|FAILED|ERROR)|^E " $OUT/test-reports.txt | cut -c1-300 | head -20
echo "all done at $(( $(date +%s) - start )) s"
