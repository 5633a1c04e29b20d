#!/usr/bin/env bash
# one device call: the gpu tests that cover the handoff and the partner's comparison, the census probe, then a
# short cold and warm corpus run (the corpus commands of corpus-h100/session7, for comparison)
set -u
export OUT
start=$(date +%s)
budget=${BUDGET:-500}
timeout 200 bash scripts/gpu_check.sh tests-serial tests/test_handoff.py tests/test_gpu.py::test_a_kept_timed_output_made_right_after_its_call_is_refused_on_the_gpu tests/test_gpu.py::test_graph_mode_checks_the_outputs_of_its_replays >/dev/null 2>&1
tail -5 $OUT/pytest-tests-serial.log
echo "tests done at $(( $(date +%s) - start )) s"
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0
timeout 60 python3 benchmarks/corpus-h100/session8/census_probe.py > $OUT/census_probe.txt 2>&1; cat $OUT/census_probe.txt
export OUT=$OUT/corpus
mkdir -p $OUT
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv > $OUT/clocks.txt
printf 'timeouts:\n  step_s: 15\n' > /tmp/step15.yaml  # the one hanging solution costs 15 s, not 90
left=$(( budget - ($(date +%s) - start) ))
GENERATE_ARGS="--problems 5 --solutions 20" LIMIT=$(( left * 6 / 10 )) bash benchmarks/corpus/measure.sh cold --config /tmp/step15.yaml
LIMIT=$(( budget + 10 - ($(date +%s) - start) )) bash benchmarks/corpus/measure.sh warm --config /tmp/step15.yaml
echo "all done at $(( $(date +%s) - start )) s"
