"""Trusted worker: computes everything the solution is judged against, from the problem file alone.

It imports the problem file and nothing a solution wrote. In order: the correctness trials, the buffers
before and after them, the reference timed alone (or a short check of its cached time), and trials after every
weight was perturbed; the solution worker repeats the same sequence (its timed calls are compared with each job's
reference partner's instead: ``kbench.reference_partner``). Each kind of output is also evaluated in float64
(``Float64Audit``). Then, when asked, torch.compile(Model) is timed, in a phase of its own.
Usage (by the parent only): ``python -m kbench.reference_worker SPEC_JSON CHANNEL_FD``.
"""

from __future__ import annotations

import copy
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbench.channel import Channel
from kbench.spec import PERTURBED, TRIAL, WorkerSpec, float64_kind

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


def _compile_timing(model: Any, input_sets: list[Any], spec: WorkerSpec) -> dict[str, Any]:
    """torch.compile(model)'s timing, or why there is none."""
    import torch

    from kbench import timing

    try:
        compiled = torch.compile(model, mode=spec.compile_mode)
        plan = timing.TimingPlan.from_dict(spec.timing)
        timed = timing.time_models([compiled], [input_sets], spec.device, plan, ["torch.compile(reference)"])
    except Exception as exc:  # a problem torch.compile cannot handle has no compile baseline, that's all
        return {"compile_error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    return {
        "compile_timing_ms": timed.samples_ms[0],
        "compile_timing_mode": timed.mode,
        "timing_notes": _fallback_notes("torch.compile baseline", timed),
    }


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


def main(spec_path: str, fd: str) -> None:
    # Its files are announced with their digests, like a solution's: solution code may run while they are written
    # (a build worker imports a solution, another GPU's job runs one), and the parent loads only what was announced.
    channel = Channel(int(fd))  # the worker starts in the "load" phase
    try:
        import torch

        from kbench import execution, weights

        spec = WorkerSpec.read(Path(spec_path))
        problem = execution.load_problem(spec)
        channel.phase("run")
        model = execution.seeded_model(problem, problem.Model, spec.weights_seed(), spec.device)
        perturbed = weights.perturbed_values(model, spec.perturbation_seed(), spec.perturbation_trials > 0)
        # The tensors as built, which the solution worker matches, and the buffers' values before the trials: the
        # judge needs to know which ones the forward changes.
        tensors = {name: tensor.is_floating_point() for name, tensor in weights.named_state(model)}
        initial = weights.snapshot(dict(weights.named_state(model)), weights.buffer_names(model))
        execution.save_state(initial, spec, "ref_initial", channel)
        exact = Float64Audit(spec.audit_float64)

        def calls_on(
            seeds: list[int], kind: str, made_on: str | None = None
        ) -> Callable[[Callable[[list[Any]], Any]], None]:
            return lambda forward: execution.run_calls(forward, problem, spec, seeds, "ref", kind, channel, made_on)

        exact.run(model, calls_on(spec.trial_seeds(), float64_kind(TRIAL)))
        calls_on(spec.trial_seeds(), TRIAL)(lambda inputs: model(*inputs))
        state = dict(weights.named_state(model))
        execution.save_state(weights.snapshot(state, weights.buffer_names(model)), spec, "ref", channel)
        input_sets = execution.timing_input_sets(problem, spec)
        timings = _timings(model, input_sets, spec)
        last_outputs = timings.pop("last_outputs")  # only their size is used: each job's partner gives timed outputs
        matrix_flops = _matrix_flops(model, input_sets[0])
        with torch.no_grad():
            for name, tensor in state.items():
                if name in perturbed:
                    tensor.copy_(perturbed[name])
        on_cpu = execution.PERTURBED_INPUTS_ON
        exact.run(model, calls_on(spec.perturbed_trial_seeds(), float64_kind(PERTURBED), on_cpu))
        calls_on(spec.perturbed_trial_seeds(), PERTURBED, on_cpu)(lambda inputs: model(*inputs))
        channel.send(
            result={
                **timings,
                "device_info": execution.describe_device(spec.device),
                "audit_error": exact.error,
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
            channel.send(compiled=_compile_timing(seeded, input_sets, spec))
    except BaseException as exc:  # report every failure, then exit; the parent decides what it means
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        channel.send(error={"reason": reason, "detail": traceback.format_exc()})
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
