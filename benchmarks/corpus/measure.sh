#!/usr/bin/env bash
# The throughput benchmark of issue #18, in pieces that each fit one 10-minute device call.
#
#   benchmarks/corpus/measure.sh cold    # generate the corpus, empty build cache, start the cold run
#   benchmarks/corpus/measure.sh resume  # go on with the latest run where the last call's limit cut it off
#   benchmarks/corpus/measure.sh warm    # a new run of the same corpus with every build cached
#
# Each piece stops itself after $LIMIT seconds (default 540) and kbench keeps every finished result; `resume`
# finishes the run with `kbench bench --resume`. Everything lives under $BENCH (default /tmp/kbench-corpus: kept
# while the machine stays up), and a copy of the runs, logs and wall times goes to $OUT/corpus-runs.tgz.
# Jobs per hour: a run's jobs (results.jsonl) over its pieces' wall times in walls.txt; a piece cut off records
# kbench's `throughput` of what it finished, `interrupted: true`, in metadata.json (earlier pieces' go to
# `earlier_throughput` as a resume records its own). DEVICE (cuda) and GENERATE_ARGS (e.g. "--problems 6 --solutions 20")
# make a small run for trying the script out. PROFILE=1 runs kbench under `py-spy record --subprocesses` (when
# py-spy is installed) into $BENCH/$PHASE-<start>.pyspy.txt; `profile_summary.py` reads it. Sampling slows the
# run a little, so a profiled run's jobs per hour are not the benchmark's figures.
set -uo pipefail
PHASE=${1:?usage: $0 cold|resume|warm [kbench bench args]}
shift
BENCH=${BENCH:-/tmp/kbench-corpus}
LIMIT=${LIMIT:-540}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$BENCH/out}
export KBENCH_CACHE_DIR=$BENCH/cache PYTHONUNBUFFERED=1 COLUMNS=200
mkdir -p "$BENCH/runs" "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
folders=(--problems-dir "$BENCH/corpus/problems" --solutions-dir "$BENCH/corpus/solutions" --results-dir "$BENCH/runs")

case "$PHASE" in
    cold)
        rm -rf "$BENCH/cache" "$BENCH/corpus"
        # shellcheck disable=SC2086  # GENERATE_ARGS is a list of arguments
        python3 "$here/generate.py" --out "$BENCH/corpus" ${GENERATE_ARGS:-} | tee "$BENCH/generate.log"
        command=(kbench bench --all --device "$DEVICE" "${folders[@]}" "$@") ;;
    resume)
        latest=$(ls -1 "$BENCH/runs" | grep -v '\.' | sort | tail -1)
        command=(kbench bench --resume "$latest" --results-dir "$BENCH/runs" "$@") ;;
    warm)
        command=(kbench bench --all --device "$DEVICE" "${folders[@]}" "$@") ;;
    *) echo "usage: $0 cold|resume|warm [kbench bench args]" >&2; exit 2 ;;
esac

start=$(date +%s)
if [ "${PROFILE:-0}" = 1 ] && command -v py-spy >/dev/null; then
    command=(py-spy record --subprocesses --threads --nonblocking --format raw --rate 50
             -o "$BENCH/$PHASE-$start.pyspy.txt" -- "${command[@]}")
fi
timeout --signal=INT "$LIMIT" "${command[@]}" >"$BENCH/$PHASE-$start.log" 2>&1
code=$?
echo "$PHASE start=$start exit=$code wall_s=$(( $(date +%s) - start )) ${command[*]}" | tee -a "$BENCH/walls.txt"
tail -5 "$BENCH/$PHASE-$start.log"
tar czf "$OUT/corpus-runs.tgz" -C "$BENCH" runs walls.txt generate.log $(cd "$BENCH" && ls ./*.log ./*.pyspy.txt 2>/dev/null)
