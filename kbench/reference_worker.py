"""Trusted worker: computes everything the solution is judged against, from the problem file alone.

It imports the problem file and nothing a solution wrote. In order: float64 outputs (accuracy audit), the
correctness trials, the buffers after them, the timed calls (the last output per input set is kept), and
trials after every weight was perturbed. The solution worker repeats the same sequence.
Usage (by the parent only): ``python -m kbench.reference_worker SPEC_JSON CHANNEL_FD``.
"""

from __future__ import annotations

import copy
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbench.channel import Channel
from kbench.spec import FLOAT64, PERTURBED, TRIAL, WorkerSpec

if TYPE_CHECKING:
    from kbench.timing import TimedCalls


def _float64_outputs(model: Any, problem: Any, spec: WorkerSpec, channel: Channel) -> str | None:
    """Run a float64 copy of the model on the trial inputs; return why not, if it cannot."""
    from kbench import execution

    try:
        model64 = copy.deepcopy(model).double()
        execution.run_calls(
            lambda inputs: model64(*execution.to_float64(inputs)),
            problem,
            spec,
            spec.trial_seeds(),
            "ref",
            FLOAT64,
            channel,
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _timings(model: Any, input_sets: list[Any], spec: WorkerSpec) -> dict[str, Any]:
    """Eager timing (and torch.compile's, when asked), plus the last output on each input set. With the
    timings cached by the parent, the outputs are computed once per set, untimed."""
    import torch

    from kbench import timing

    plan = timing.TimingPlan.from_dict(spec.timing)
    if not spec.time_reference:
        with torch.no_grad():
            return {"timing_ms": [], "last_outputs": [model(*inputs) for inputs in input_sets]}
    timed = timing.time_models([model], [input_sets], spec.device, plan, ["reference"])
    found: dict[str, Any] = {
        "timing_ms": timed.samples_ms[0],
        "last_outputs": timed.last_outputs,
        "timing_mode": timed.mode,
        "timing_notes": _fallback_notes("reference alone", timed),
    }
    if spec.compile_mode is not None:
        try:
            compiled = torch.compile(model, mode=spec.compile_mode)
            timed = timing.time_models([compiled], [input_sets], spec.device, plan, ["torch.compile(reference)"])
            found["compile_timing_ms"] = timed.samples_ms[0]
            found["compile_timing_mode"] = timed.mode
            found["timing_notes"] += _fallback_notes("torch.compile baseline", timed)
        except Exception as exc:  # a problem torch.compile cannot handle has no compile baseline, that's all
            found["compile_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return found


def _fallback_notes(what: str, timed: TimedCalls) -> list[str]:
    return [f"{what} timed with {timed.mode}: {timed.fallback}"] if timed.fallback else []


def main(spec_path: str, fd: str) -> None:
    channel = Channel(int(fd))  # the worker starts in the "load" phase
    try:
        import torch

        from kbench import execution, weights

        spec = WorkerSpec.read(Path(spec_path))
        problem = execution.load_problem(spec)
        channel.phase("run")
        model = execution.seeded_model(problem, problem.Model, spec.weights_seed(), spec.device)
        perturbed = weights.perturbed_values(model, spec.perturbation_seed(), spec.perturbation_trials > 0)
        audit_error = _float64_outputs(model, problem, spec, channel) if spec.audit_float64 else None
        execution.run_calls(lambda inputs: model(*inputs), problem, spec, spec.trial_seeds(), "ref", TRIAL, channel)
        state = dict(weights.named_state(model))
        execution.save_state(weights.snapshot(state, weights.buffer_names(model)), spec, "ref", channel)
        input_sets = execution.timing_input_sets(problem, spec)
        timings = _timings(model, input_sets, spec)
        last_outputs = timings.pop("last_outputs")
        execution.save_timed_outputs(last_outputs, spec, "ref", channel)
        with torch.no_grad():
            for name, tensor in state.items():
                if name in perturbed:
                    tensor.copy_(perturbed[name])
        execution.run_calls(
            lambda inputs: model(*inputs), problem, spec, spec.perturbed_trial_seeds(), "ref", PERTURBED, channel
        )
        channel.send(
            result={
                **timings,
                "device_info": execution.describe_device(spec.device),
                "audit_error": audit_error,
                "input_bytes": execution.tensor_bytes(input_sets[0]),
                "output_bytes": execution.tensor_bytes(last_outputs[0]),
                "state_bytes": sum(t.numel() * t.element_size() for t in state.values()),
            }
        )
    except BaseException as exc:  # report every failure, then exit; the parent decides what it means
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        channel.send(error={"reason": reason, "detail": traceback.format_exc()})
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
