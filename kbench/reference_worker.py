"""Trusted worker: computes everything the solution is judged against, from the problem file alone.

It imports the problem file and nothing a solution wrote. In order: the correctness trials, the buffers
before and after them, the reference timed alone (or a short check of its cached time), and trials after every
weight was perturbed; the solution worker repeats the same sequence (its timed calls are compared with each job's
reference partner's instead: ``kbench.reference_partner``). Each kind of output is also evaluated in float64
(``Float64Audit``). Then, when asked, torch.compile(Model) is timed, in a phase of its own.
Usage (by the parent only): ``python -m kbench.reference_worker SPEC_JSON CHANNEL_FD [GATE_FD]``: with a gate, it
waits there after its CPU-only start (imports, the problem file, the seeded weights) until the GPU is its own.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbench.channel import Channel, wait_at_gate
from kbench.spec import PERTURBED, TRIAL, WorkerSpec, float64_kind, output_path

if TYPE_CHECKING:
    from kbench.timing import TimedCalls


class Float64Audit:
    """The reference evaluated in float64 beside each fp32 sequence: trials, perturbed trials, and (in the reference
    partner) the timed calls kept for checking.

    Each evaluation runs on a fresh float64 copy of the model as it is just then (weights and buffers), so it
    sees what the fp32 calls see. The parent judges outputs against it (docs/verdicts.md, "Matching outputs"),
    and uses the trials for the accuracy audit. All or nothing: after one failure no more are made, and the parent
    uses none of them.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.error: str | None = None

    def run(self, model: Any, calls: Callable[[Callable[[list[Any]], Any]], None]) -> None:
        """``calls(forward64)`` makes and saves the float64 calls, each forward taking fp32 inputs."""
        if not self.enabled or self.error is not None:
            return
        from kbench import execution

        # The copy (twice the fp32 weights' bytes) is freed on return, before the next fp32 calls.
        try:
            model64 = copy.deepcopy(model).double()
            calls(lambda inputs: model64(*execution.to_float64(inputs)))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]


def evaluated(
    model: Any, problem: Any, spec: WorkerSpec, seeds: list[int], audit: Float64Audit, made_on: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The outputs of one call per seed, on fresh seeded inputs, as the solution's worker makes the same calls, and
    their float64 evaluation: first, on a copy of the model as it is, then the fp32 calls, which move the model's
    buffers as the solution's calls move its own. Records on the device; the float64 ones at full precision, with
    PyTorch fp32's own error on each output (``compare.exact_record``), None when the audit is off or failed."""
    import torch

    from kbench import execution
    from kbench.compare import exact_record

    def calls(forward: Callable[[list[Any]], Any], into: list[dict[str, Any]]) -> None:
        for seed in seeds:
            inputs = execution.seeded_inputs(problem, seed, spec.device, made_on)
            with torch.no_grad():
                into.append(execution.pack_outputs(forward(execution.clone_inputs(inputs)), on_cpu=False))
            execution.synchronize(spec.device)

    in_float64: list[dict[str, Any]] = []
    audit.run(model, lambda forward64: calls(forward64, in_float64))
    outputs: list[dict[str, Any]] = []
    calls(lambda inputs: model(*inputs), outputs)
    if not audit.enabled or audit.error is not None:
        return outputs, None
    return outputs, [exact_record(e, r, narrow=False) for e, r in zip(in_float64, outputs, strict=True)]


def _save_evaluated(
    spec: WorkerSpec, kind: str, outputs: list[dict[str, Any]], exact: list[dict[str, Any]] | None, channel: Channel
) -> None:
    """The outputs, and their float64 evaluations rounded to fp32 where the output is fp32: the parent reads half
    the bytes and measures nothing (PyTorch fp32's own error was measured here, at full precision)."""
    from kbench import execution
    from kbench.compare import exact_record

    out_dir = Path(spec.out_dir)
    for index, record in enumerate(outputs):
        execution.save_record(record, output_path(out_dir, "ref", kind, index), channel)
        if exact is not None:  # its fp32 error, measured in ``evaluated``, is kept
            narrowed = exact_record(exact[index], record, narrow=True)
            execution.save_record(narrowed, output_path(out_dir, "ref", float64_kind(kind), index), channel)


def _timings(model: Any, input_sets: list[Any], spec: WorkerSpec) -> dict[str, Any]:
    """Eager timing, plus the last output on each input set, and how the host and device were while it was
    timed. With the timings cached by the parent, only a short check of them is timed (``check_ms``), which the
    parent holds against the cached time (baselines.check_refusal)."""
    import torch

    from kbench import baselines, timing

    if not spec.time_reference:
        checked = timing.time_models([model], [input_sets], spec.device, baselines.check_plan(spec.timing))
        with torch.no_grad():  # a set the check's few rounds did not reach still gets its output
            last = [
                out if out is not None else model(*ins)
                for out, ins in zip(checked.last_outputs, input_sets, strict=True)
            ]
        return {"timing_ms": [], "last_outputs": last, "check_ms": checked.samples_ms[0], "check_mode": checked.mode}
    plan = timing.TimingPlan.from_dict(spec.timing)
    host = baselines.host_now()
    timed = timing.time_models([model], [input_sets], spec.device, plan, ["reference"])
    return {
        "timing_ms": timed.samples_ms[0],
        "last_outputs": timed.last_outputs,
        "timing_mode": timed.mode,
        "timing_notes": _fallback_notes("reference alone", timed),
        "timing_conditions": baselines.timing_conditions(spec.device, host),
    }


def _compile_timing(model: Any, input_sets: list[Any], spec: WorkerSpec, channel: Channel) -> dict[str, Any]:
    """torch.compile(model)'s timing, or why there is none."""
    import torch

    from kbench import execution, timing

    try:
        compiled = torch.compile(model, mode=spec.compile_mode)
        with torch.no_grad():  # as the timing calls it, so that this call's compiled code is the one timed
            compiled(*input_sets[0])  # the compiling, on a clock of its own (the timing's warm-up would do it)
        execution.synchronize(spec.device)
        channel.step("compile_call")
        plan = timing.TimingPlan.from_dict(spec.timing)
        timed = timing.time_models([compiled], [input_sets], spec.device, plan, ["torch.compile(reference)"])
        channel.step("compile_timing")
    except Exception as exc:  # a problem torch.compile cannot handle has no compile baseline, that's all
        return {"compile_error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    return {
        "compile_timing_ms": timed.samples_ms[0],
        "compile_timing_mode": timed.mode,
        "timing_notes": _fallback_notes("torch.compile baseline", timed),
    }


def _started(spec: WorkerSpec, channel: Channel, gate_fd: str | None) -> tuple[Any, Any]:
    """The problem module and its seeded ``Model``, on the CPU (where seeded_model makes the weights wherever they
    go), after the worker's CPU-only start; then the gate, when it has one: a worker started early does all this
    while another job has the GPU."""
    from kbench import execution

    problem = execution.load_problem(spec)
    model = execution.seeded_model(problem, problem.Model, spec.weights_seed(), "cpu")
    if spec.time_reference and spec.compile_mode is not None:
        _import_compiler()
    if gate_fd is not None:
        wait_at_gate(gate_fd, channel)
    return problem, model


def _import_compiler() -> None:
    """Import what torch.compile's first call would (Dynamo, Inductor): about 2 s of CPU-only work, which a worker
    started early does before its gate rather than on its GPU's time. One that fails leaves its error to the
    compile phase, which costs the baseline only, never the reference."""
    with contextlib.suppress(Exception):
        import torch._dynamo
        import torch._inductor.compile_fx  # noqa: F401  (imported for its cost, not its names)


def _matrix_flops(model: Any, inputs: list[Any]) -> int | None:
    """Operations of one call's matrix products (matmul, convolution, attention), as torch's FlopCounterMode
    counts them; elementwise work is left to the memory side of the roofline. None where it cannot count."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    except Exception:  # a count is a report's extra, never a reason to fail the reference
        return None
    return int(counter.get_total_flops())


def _fallback_notes(what: str, timed: TimedCalls) -> list[str]:
    return [f"{what} timed with {timed.mode}: {timed.fallback}"] if timed.fallback else []


def main(spec_path: str, fd: str, gate_fd: str | None = None) -> None:
    # Its files are announced with their digests, like a solution's: solution code may run while they are written
    # (a build worker imports a solution, another GPU's job runs one), and the parent loads only what was announced.
    channel = Channel(int(fd))  # the worker starts in the "load" phase
    try:
        import torch

        from kbench import execution, weights
        from kbench.audit import worst_relative_error

        spec = WorkerSpec.read(Path(spec_path))
        problem, model = _started(spec, channel, gate_fd)
        channel.phase("run")
        model = model.to(spec.device)
        perturbed = weights.perturbed_values(model, spec.perturbation_seed(), spec.perturbation_trials > 0)
        # The tensors as built, which the solution worker matches, and the buffers' values before the trials: the
        # judge needs to know which ones the forward changes.
        tensors = {name: tensor.is_floating_point() for name, tensor in weights.named_state(model)}
        initial = weights.snapshot(dict(weights.named_state(model)), weights.buffer_names(model))
        execution.save_state(initial, spec, "ref_initial", channel)
        channel.step("weights")
        audit = Float64Audit(spec.audit_float64)
        trials, trials64 = evaluated(model, problem, spec, spec.trial_seeds(), audit)
        float64_error = worst_relative_error(trials, trials64) if trials64 is not None else None
        _save_evaluated(spec, TRIAL, trials, trials64, channel)
        del trials, trials64
        state = dict(weights.named_state(model))
        execution.save_state(weights.snapshot(state, weights.buffer_names(model)), spec, "ref", channel)
        channel.step("trials")
        input_sets = execution.timing_input_sets(problem, spec)
        timings = _timings(model, input_sets, spec)
        channel.step("timing")
        last_outputs = timings.pop("last_outputs")  # only their size is used: each job's partner gives timed outputs
        matrix_flops = _matrix_flops(model, input_sets[0])
        with torch.no_grad():
            for name, tensor in state.items():
                if name in perturbed:
                    tensor.copy_(perturbed[name])
        seeds, on_cpu = spec.perturbed_trial_seeds(), execution.PERTURBED_INPUTS_ON
        _save_evaluated(spec, PERTURBED, *evaluated(model, problem, spec, seeds, audit, on_cpu), channel)
        channel.step("perturbed")
        channel.send(
            result={
                **timings,
                "device_info": execution.describe_device(spec.device),
                "audit_error": audit.error,
                "float64_error": float64_error,
                "input_bytes": execution.tensor_bytes(input_sets[0]),
                "output_bytes": execution.tensor_bytes(last_outputs[0]),
                "state_bytes": sum(t.numel() * t.element_size() for t in state.values()),
                "matrix_flops": matrix_flops,
                "tensors": tensors,
            }
        )
        if spec.time_reference and spec.compile_mode is not None:
            # Last, in a phase of its own: the reference's result is with the parent already, so a compile
            # that hangs or crashes the process costs the torch.compile baseline only.
            channel.phase("compile")
            del model, state, perturbed  # the fresh copy below takes their memory
            seeded = execution.seeded_model(problem, problem.Model, spec.weights_seed(), spec.device)
            channel.send(compiled=_compile_timing(seeded, input_sets, spec, channel))
    except BaseException as exc:  # report every failure, then exit; the parent decides what it means
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        channel.send(error={"reason": reason, "detail": traceback.format_exc()})
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
