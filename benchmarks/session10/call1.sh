#!/usr/bin/env bash
# device call 1 of session 10: the confined CUDA/Triton test first (it decides whether `sandbox: auto` confines
# on CUDA), then every other gpu test, one at a time, each outcome written to $OUT as it ends
set -u
start=$(date +%s)
export TORCH_CUDA_ARCH_LIST=9.0 KBENCH_CACHE_DIR=/tmp/kbench-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv > $OUT/clocks.txt
timeout 200 bash scripts/gpu_check.sh tests-serial tests/test_gpu.py::test_confined_cuda_and_triton_solutions_build_run_and_plant_nothing >/dev/null 2>&1
mv $OUT/pytest-tests-serial.log $OUT/pytest-confined.log
tail -15 $OUT/pytest-confined.log
echo "confined done at $(( $(date +%s) - start )) s"
timeout $(( ${LIMIT:-560} - ($(date +%s) - start) )) bash scripts/gpu_check.sh tests-serial tests/test_handoff.py tests/test_gpu.py \
    --deselect tests/test_gpu.py::test_confined_cuda_and_triton_solutions_build_run_and_plant_nothing >/dev/null 2>&1
tail -30 $OUT/pytest-tests-serial.log
ls $OUT
echo "all done at $(( $(date +%s) - start )) s"
