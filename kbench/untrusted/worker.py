"""UNTRUSTED worker: builds and imports a solution, runs its ``ModelNew`` and times it.

Everything here runs in the same process as solution code, so nothing it reports is taken on trust: the
parent compares the saved outputs itself against the reference worker's. A failure is reported with the
verdict it implies; a worker that dies or hangs is judged by the parent from the outside.
Usage (by the parent only): ``python -m kbench.untrusted.worker SPEC CHANNEL_FD GATE_FD TURN_COMMAND_FD TURN_REPLY_FD``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from kbench.channel import Channel, wait_at_gate
from kbench.device_kind import on_gpu
from kbench.process_tree import become_subreaper
from kbench.spec import PERTURBED, TIMED, TRIAL, WorkerSpec, output_path


class _Failure(Exception):
    def __init__(self, verdict: str, exc: BaseException) -> None:
        super().__init__(verdict)
        self.verdict = verdict
        self.exc = exc


def _is_build_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, subprocess.CalledProcessError) or "Error building extension" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if "out of memory" in text.lower() and "OutOfMemory" not in text:
        text = f"out of memory: {text}"
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _extension_dir(spec: WorkerSpec) -> Path:
    """The solution's build folder (``TORCH_EXTENSIONS_DIR``), made now: a confined worker could not make it."""
    from kbench import build_cache, caches

    source = Path(spec.solution_path or "").read_text(encoding="utf-8")
    root = Path(spec.extensions_root) if spec.extensions_root else caches.default_cache_root()
    ext_dir = build_cache.extension_dir(root, source, spec.device)
    ext_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(ext_dir)
    return ext_dir


def _confine(spec: WorkerSpec, ext_dir: Path) -> None:
    """From here on this process, and all it starts, writes only to its job's folder and its build folder (and
    device files): see ``kbench.sandbox``. Its libraries' temporary files and caches are pointed there first."""
    from kbench import sandbox

    scratch = Path(spec.out_dir) / "tmp"
    scratch.mkdir(exist_ok=True)
    sandbox.confine_worker([Path(spec.out_dir), ext_dir], scratch, ext_dir)


def _start_device(spec: WorkerSpec) -> None:
    """Start the CUDA driver past the gate (no timing runs beside it then) and before the solution is imported:
    where it cannot start, that is the host's failure or kbench's, and the parent tells it from the solution's by
    the phase it came in. The driver alone: torch's own CUDA state still starts when the solution first uses it."""
    if not on_gpu(spec.device):
        return
    from kbench import cuda_driver

    try:
        count = cuda_driver.device_count()
    except cuda_driver.DriverError as exc:
        hint = " (the worker is confined: `integrity.sandbox: off` shows whether that is what stops it)"
        raise RuntimeError(f"CUDA cannot start in this worker{hint if spec.confined else ''}: {exc}") from exc
    if count < 1:
        raise RuntimeError("CUDA started, but this worker sees no GPU (CUDA_VISIBLE_DEVICES)")


def _build(spec: WorkerSpec, ext_dir: Path, channel: Channel) -> Any:
    from kbench import build_cache, execution

    cache_hit = build_cache.has_built_extension(ext_dir)
    started = time.perf_counter()
    try:
        module = execution.load_module(Path(spec.solution_path or ""), "kbench_solution")
    except BaseException as exc:
        raise _Failure("compile_error" if _is_build_failure(exc) else "load_error", exc) from exc
    channel.send(built={"build_s": time.perf_counter() - started, "cache_hit": cache_hit})
    model_new = getattr(module, "ModelNew", None)
    if not isinstance(model_new, type):
        raise _Failure("load_error", LookupError("the solution defines no class ModelNew"))
    return model_new


def _take_turns(spec: WorkerSpec, problem: Any, candidate: Any, turn_fds: tuple[str, str], channel: Channel) -> Any:
    """ModelNew's timed calls, each when the parent says (``kbench.turn_taker``), on inputs no call saw before; the
    output of each round the parent keeps leaves this process as it is kept, for the parent to compare with the
    reference partner's: on CUDA staged for the partner to copy (``kbench.handoff``), else saved, and its file
    dropped when a later round replaces it."""
    from kbench import execution
    from kbench.turn_taker import TurnPipe, serve

    def saved(index: int) -> Path:
        return output_path(Path(spec.out_dir), "new", TIMED, index)

    def keep(index: int, output: Any) -> None:
        execution.save_outputs(output, saved(index), channel)

    pipe = TurnPipe(int(turn_fds[0]), int(turn_fds[1]))
    return serve(
        candidate, problem, spec, pipe, keep, watched=True, discard=lambda index: saved(index).unlink(missing_ok=True)
    )


def _run(
    spec: WorkerSpec,
    problem: Any,
    reference: Any,
    model_new: type,
    guards: Any,
    channel: Channel,
    turn_fds: tuple[str, str],
) -> None:

    from kbench import execution, timing_modes, weights
    from kbench.untrusted import census
    from kbench.untrusted.guards import CallWatch

    try:
        reference = reference.to(spec.device)
        candidate = execution.seeded_model(problem, model_new, spec.weights_seed(), spec.device)
        state = weights.copy_reference_weights(reference, candidate)
        perturbed = weights.perturbed_values(reference, spec.perturbation_seed(), spec.perturbation_trials > 0)
        buffer_names = weights.buffer_names(reference)
        channel.send(
            weights={"mode": state.mode, "matched": sorted(state.targets), "unmatched": sorted(state.unmatched)}
        )
        del reference  # only its seeded weights were wanted: the reference never runs in this process
        channel.step("weights")
        watch = CallWatch(spec.device, spec.poison_numel)
        # Under kernel timing the profiler starts threads that outlive its session: start them before the thread
        # census takes its baseline (at the first checked call), so they are not taken for the solution's.
        with timing_modes.profiler_session(spec.timing.get("mode") == "kernel"):
            pass

        def checked(inputs: list[Any]) -> Any:
            watch.poison()
            return watch.call(candidate, inputs)

        execution.run_calls(checked, problem, spec, spec.trial_seeds(), "new", TRIAL, channel)
        execution.save_state(weights.snapshot(state.targets, buffer_names), spec, "new", channel)
        channel.step("trials")
        served = _take_turns(spec, problem, candidate, turn_fds, channel)
        channel.step("turns")
        if served.deferred:
            watch.flags.add("side_stream" if on_gpu(spec.device) else "thread")
        if served.inputs_mutated:
            watch.flags.add("input_mutated")
        # Turns the parent skipped (the trials' answers were wrong already) leave nothing here that could change
        # the verdict: neither the perturbed trials nor the census run. The perturbed weights reach ModelNew only
        # through its matched tensors.
        if state.targets and not served.skipped:
            state.copy_in(perturbed)
            seeds = spec.perturbed_trial_seeds()
            execution.run_calls(checked, problem, spec, seeds, "new", PERTURBED, channel, execution.PERTURBED_INPUTS_ON)
        channel.step("perturbed")
        kernels = []
        if spec.kernel_census and on_gpu(spec.device) and not served.skipped:
            source = Path(spec.solution_path or "").read_text(encoding="utf-8")
            inputs = execution.seeded_inputs(problem, spec.trial_seeds()[0], spec.device, served.inputs_on)
            kernels = census.kernel_census(candidate, inputs, source)
            channel.step("census")
    except BaseException as exc:
        raise _Failure("runtime_error", exc) from exc
    flags, replaced = guards.check()
    settings = guards.changed_settings()
    if settings:
        flags.append("settings_changed")
    channel.send(
        result={
            "turns": served.rounds,
            "settings": settings,
            "flags": sorted({*flags, *watch.flags}),
            "threads": sorted(watch.new_threads),
            "replaced": replaced,
            "kernels": kernels,
        }
    )


def main(spec_path: str, fd: str, gate_fd: str, *turn_fds: str) -> None:
    channel = Channel(int(fd))  # the worker starts in the "load" phase
    try:
        from kbench import execution
        from kbench.untrusted.guards import Guards

        spec = WorkerSpec.read(Path(spec_path))
        # What the solution starts and leaves behind in a new session (a double fork) stays in this worker's tree,
        # where the parent counts its CPU time beside the reference's turns for this job alone. A solution that
        # undoes this leaves such processes to the parent, which counts them for every job under way.
        become_subreaper()
        # Where the build folder's name needs the GPU's capability and NVML cannot tell, torch opens a CUDA
        # context for it: before the gate only when the worker must confine itself there.
        ext_dir = _extension_dir(spec) if spec.confined else None
        if ext_dir is not None:
            _confine(spec, ext_dir)
        problem = execution.load_problem(spec)
        guards = Guards()  # before the solution is imported: what it replaces shows later
        # The reference's seeded weights, made on the CPU before any solution code runs (moved to the device
        # in the run phase): for large weights this is seconds, done while the worker may still wait.
        reference = execution.seeded_model(problem, problem.Model, spec.weights_seed(), "cpu")
        execution.start_cpu_threads()  # before the thread census's baseline, like the hashing threads
        wait_at_gate(gate_fd, channel)
        _start_device(spec)
        channel.phase("build")
        model_new = _build(spec, ext_dir or _extension_dir(spec), channel)
        channel.phase("run")
        _run(spec, problem, reference, model_new, guards, channel, turn_fds)
    except _Failure as failure:
        channel.send(
            error={
                "verdict": failure.verdict,
                "reason": _describe(failure.exc),
                "detail": "".join(traceback.format_exception(failure.exc)),
            }
        )
        sys.exit(1)
    except BaseException as exc:
        channel.send(error={"verdict": "runtime_error", "reason": _describe(exc), "detail": traceback.format_exc()})
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:6])
