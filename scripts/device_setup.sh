# Sourced by the scripts of a device call (scripts/gpu_check.sh, benchmarks/session*/call.sh), once per call:
# kbench installed, with the carried wheels (.whl) where the machine lacks its dependencies; CUDA extensions built
# for the H100/H200's architecture only; the GPU's state (clocks, power) as the call starts recorded in $OUT.
if [ -z "${KBENCH_DEVICE_READY:-}" ]; then
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1 COLUMNS=200
    if [ -d .whl ] && ! python3 -c "import pydantic, psutil, filelock, platformdirs, plotly" 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
    { nvidia-smi; nvidia-smi -q -d CLOCK,POWER,PERFORMANCE; } >"$OUT/nvidia-smi.txt" 2>&1
    export KBENCH_DEVICE_READY=1
fi
