#!/usr/bin/env bash
# One device call: install kbench, run the tests (GPU ones included), then the daily commands on CUDA.
# Logs and the run directory go to $OUT (the device tool brings them back). Needs .whl carried along when
# the machine lacks pydantic, psutil, filelock or platformdirs (see README, "Running on the GPU machine").
set -uo pipefail
OUT=${OUT:-/tmp/kbench-gpu-check}
mkdir -p "$OUT"
# shellcheck source=scripts/device_setup.sh
source "$(dirname "$0")/device_setup.sh"

# Phases, so that each fits in one device call: `tests` runs the gpu-marked tests, four at a time (their CUDA
# builds then overlap); on the H200 machine they took longer than one call, so `tests-shared` runs those that may
# share the GPU and `tests-alone` those marked gpu_alone, one call each, one test at a time (four at a time, the
# shared ones took 360-505 s each there; one at a time, 10-100 s: about 340 s and 300 s for the two sets);
# `tests-serial [test ids]` runs the gpu tests named (default: all), one at a time, in the order given;
# `commands` runs the daily commands on CUDA; `all` (default) runs every test, then the
# commands. For issue #5's timing evidence, `bench NAME [bench args]` runs one timed `kbench bench --all` into
# $RUNS (kept on the machine, so calls made while it stays up add to it) and `compare` compares the runs named
# events1, events2, events3 (0.5 % bound) and events3 with kernel (2 % bound), e.g.
#   gpu_check.sh bench events1; gpu_check.sh bench events2          (one call: cold, then warm)
#   gpu_check.sh bench events3; gpu_check.sh bench kernel --timing-mode kernel; gpu_check.sh compare
# Both pack $RUNS into $OUT/runs.tgz.
PHASE=${1:-all}
RUNS=${KBENCH_RUNS:-/tmp/kbench-runs}
mkdir -p "$RUNS"
pack() { tar czf "$OUT/runs.tgz" -C "$(dirname "$RUNS")" "$(basename "$RUNS")"; }
run_named() { sed -n 's/^results: //p' "$RUNS/$1.log" 2>/dev/null | tail -1 | grep . || echo "(no finished $1 run)"; }
case "$PHASE" in
    # One build cache for the four test processes (torch's lock lets one build each extension), and each test's
    # outcome written as it ends, so a call cut off by its limit still says which failed, and why.
    tests|tests-shared|tests-alone|tests-serial)
        case "$PHASE" in
            tests-serial) selection=(-m gpu) ;;
            tests) selection=(-m gpu -n 4) ;;
            tests-shared) selection=(-m "gpu and not gpu_alone") ;;
            tests-alone) selection=(-m gpu_alone) ;;
        esac
        KBENCH_CACHE_DIR=${KBENCH_CACHE_DIR:-$HOME/.cache/kbench} KBENCH_TEST_REPORTS=$OUT \
            python3 -m pytest -q -rs --durations=10 -p no:benchmark "${selection[@]}" "${@:2}" 2>&1 \
            | tee "$OUT/pytest-$PHASE.log"
        exit 0 ;;
    all) python3 -m pytest -q -rs --durations=10 -m "slow or not slow" 2>&1 | tee "$OUT/pytest.log" ;;  # slow too
    commands) ;;
    bench)
        name=${2:?usage: $0 bench NAME [bench args]}
        shift 2
        start=$(date +%s%N)
        kbench bench --all --results-dir "$RUNS" "$@" >"$RUNS/$name.log" 2>&1
        echo "$name $* exit=$? wall_s=$(( ($(date +%s%N) - start) / 1000000000 ))" | tee -a "$RUNS/walls.txt"
        pack
        exit 0 ;;
    compare)
        {
            kbench compare "$(run_named events1)" "$(run_named events2)" "$(run_named events3)" --within 0.005 \
                --csv "$RUNS/events_spread.csv"
            echo "exit=$?"
            kbench compare "$(run_named events3)" "$(run_named kernel)" --within 0.02 --csv "$RUNS/events_vs_kernel.csv"
            echo "exit=$?"
        } 2>&1 | tee "$RUNS/compare.log"
        pack
        exit 0 ;;
    *) echo "usage: $0 [all|tests|tests-shared|tests-alone|tests-serial [ids]|commands|bench NAME [args]|compare]" >&2; exit 2 ;;
esac

{
    echo "== kbench verify example_scale_bias_relu6 --device cuda"
    kbench verify example_scale_bias_relu6 --device cuda; echo "exit=$?"
    echo "== kbench verify example_scale_bias_relu6 -s tests/fixtures/cuda/wrong_relu6.py"
    kbench verify example_scale_bias_relu6 --device cuda -s tests/fixtures/cuda/wrong_relu6.py; echo "exit=$?"
    echo "== kbench lint --all"
    kbench lint --all; echo "exit=$?"
    echo "== kbench calibrate --device cuda"
    kbench calibrate --device cuda; echo "exit=$?"
    echo "== kbench bench --all"
    kbench bench --all --results-dir "$OUT/results"; echo "exit=$?"
    kbench report --results-dir "$OUT/results" --csv "$OUT/report.csv"; echo "exit=$?"
} 2>&1 | tee "$OUT/commands.log"
