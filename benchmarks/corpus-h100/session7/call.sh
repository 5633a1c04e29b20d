#!/usr/bin/env bash
# one device call: the gpu tests that cover the handoff, then a short cold and warm corpus run
set -u
export OUT
start=$(date +%s)
budget=${BUDGET:-520}
timeout 170 bash scripts/gpu_check.sh tests-serial -k "staged_output or kept_timed or graph_mode_checks" tests/test_handoff.py tests/test_gpu.py >/dev/null 2>&1
tail -5 $OUT/pytest-tests-serial.log
echo "tests done at $(( $(date +%s) - start )) s"
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 OUT=$OUT/corpus
mkdir -p $OUT/corpus
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv > $OUT/corpus/clocks.txt
printf 'timeouts:\n  step_s: 15\n' > /tmp/step15.yaml  # the one hanging solution costs 15 s, not 90
left=$(( budget - ($(date +%s) - start) ))
GENERATE_ARGS="--problems 5 --solutions 20" LIMIT=$(( left * 6 / 10 )) bash benchmarks/corpus/measure.sh cold --config /tmp/step15.yaml
LIMIT=$(( budget + 10 - ($(date +%s) - start) )) bash benchmarks/corpus/measure.sh warm --config /tmp/step15.yaml
echo "all done at $(( $(date +%s) - start )) s"
