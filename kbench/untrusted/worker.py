"""UNTRUSTED worker: builds and imports a solution, runs its ``ModelNew`` and times it.

Everything here runs in the same process as solution code, so nothing it reports is taken on trust: the
parent compares the saved outputs itself against the reference worker's. A failure is reported with the
verdict it implies; a worker that dies or hangs is judged by the parent from the outside.
Usage (by the parent only): ``python -m kbench.untrusted.worker SPEC_JSON CHANNEL_FD GATE_FD``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from kbench.channel import Channel
from kbench.spec import PERTURBED, TRIAL, WorkerSpec


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


def _build(spec: WorkerSpec, channel: Channel) -> Any:
    from kbench import build_cache, caches, execution

    source = Path(spec.solution_path or "").read_text(encoding="utf-8")
    root = Path(spec.extensions_root) if spec.extensions_root else caches.default_cache_root()
    ext_dir = build_cache.extension_dir(root, source, spec.device)
    ext_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(ext_dir)
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


def _run(spec: WorkerSpec, problem: Any, reference: Any, model_new: type, guards: Any, channel: Channel) -> None:

    import torch

    from kbench import execution, timing, timing_modes, weights
    from kbench.untrusted import census
    from kbench.untrusted.guards import CallWatch

    try:
        reference = reference.to(spec.device)
        candidate = execution.seeded_model(problem, model_new, spec.weights_seed(), spec.device)
        state = weights.copy_reference_weights(reference, candidate)
        perturbed = weights.perturbed_values(reference, spec.perturbation_seed(), spec.perturbation_trials > 0)
        buffer_names = weights.buffer_names(reference)
        channel.send(weights=state.mode)
        watch = CallWatch(spec.device, spec.poison_numel)
        # One untimed reference call first: the thread pools it starts are not the solution's threads. Under
        # kernel timing it runs inside a profiler session, whose threads outlive it: they are kbench's too.
        first_inputs = execution.clone_inputs(execution.seeded_inputs(problem, spec.trial_seeds()[0], spec.device))
        with torch.no_grad(), timing_modes.profiler_session(spec.timing.get("mode") == "kernel"):
            reference(*first_inputs)

        def checked(inputs: list[Any]) -> Any:
            watch.poison()
            return watch.call(candidate, inputs)

        execution.run_calls(checked, problem, spec, spec.trial_seeds(), "new", TRIAL, channel)
        execution.save_state(weights.snapshot(state.targets, buffer_names), spec, "new", channel)
        input_sets = execution.timing_input_sets(problem, spec)
        pristine = [execution.clone_inputs(inputs) for inputs in input_sets]
        reference_sets = [execution.clone_inputs(inputs) for inputs in input_sets]
        # Reference and solution interleaved, round by round, each on its own copies of the inputs; the
        # parent checks this reference time against the trusted worker's, so holding it back shows.
        plan = timing.TimingPlan.from_dict(spec.timing)
        timed = timing.time_models(
            [reference, candidate], [reference_sets, input_sets], spec.device, plan, ("reference", "solution")
        )
        watch.check_inputs_unchanged(input_sets, pristine)
        if timed.deferred:
            watch.flags.add("side_stream" if spec.device.startswith("cuda") else "thread")
        execution.save_timed_outputs(timed.last_outputs, spec, "new", channel)
        if state.mode != "seeded_only":  # without a mapping, the perturbed weights cannot be given to ModelNew
            state.copy_in(perturbed)
            execution.run_calls(checked, problem, spec, spec.perturbed_trial_seeds(), "new", PERTURBED, channel)
        kernels = []
        if spec.kernel_census and spec.device.startswith("cuda"):
            source = Path(spec.solution_path or "").read_text(encoding="utf-8")
            kernels = census.kernel_census(candidate, input_sets[0], source)
    except BaseException as exc:
        raise _Failure("runtime_error", exc) from exc
    flags, replaced = guards.check()
    channel.send(
        result={
            "timing_ms": timed.samples_ms[1],
            "ref_timing_ms": timed.samples_ms[0],
            "timing_mode": timed.mode,
            "timing_fallback": timed.fallback,
            "flags": sorted({*flags, *watch.flags}),
            "replaced": replaced,
            "kernels": kernels,
        }
    )


def _wait_at_gate(gate_fd: str, channel: Channel) -> None:
    """Everything before this is kbench's own, CPU-only work; the parent may have started this worker early,
    while another job still runs, and says when the GPU is this job's."""
    channel.phase("wait")
    if not os.read(int(gate_fd), 2):
        sys.exit(0)  # the parent gave up on this job (the run ended first): nothing to report


def main(spec_path: str, fd: str, gate_fd: str) -> None:
    channel = Channel(int(fd))  # the worker starts in the "load" phase
    try:
        from kbench import execution
        from kbench.untrusted.guards import Guards

        spec = WorkerSpec.read(Path(spec_path))
        problem = execution.load_problem(spec)
        guards = Guards()  # before the solution is imported: what it replaces shows later
        # The reference's seeded weights, made on the CPU before any solution code runs (moved to the device
        # in the run phase): for large weights this is seconds, done while the worker may still wait.
        reference = execution.seeded_model(problem, problem.Model, spec.weights_seed(), "cpu")
        _wait_at_gate(gate_fd, channel)
        channel.phase("build")
        model_new = _build(spec, channel)
        channel.phase("run")
        _run(spec, problem, reference, model_new, guards, channel)
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
    main(*sys.argv[1:4])
