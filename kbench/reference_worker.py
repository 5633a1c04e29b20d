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
from typing import Any

from kbench.channel import Channel
from kbench.spec import FLOAT64, PERTURBED, TRIAL, WorkerSpec, state_path


def _float64_outputs(model: Any, problem: Any, spec: WorkerSpec) -> str | None:
    """Run a float64 copy of the model on the trial inputs; return why not, if it cannot."""
    from kbench import execution

    try:
        model64 = copy.deepcopy(model).double()
        execution.run_calls(
            lambda inputs: model64(*execution.to_float64(inputs)), problem, spec, spec.trial_seeds(), "ref", FLOAT64
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def main(spec_path: str, fd: str) -> None:
    channel = Channel(int(fd))
    channel.phase("load")
    try:
        import torch

        from kbench import execution, timing, weights

        spec = WorkerSpec.read(Path(spec_path))
        problem = execution.load_problem(spec)
        channel.phase("run")
        model = execution.seeded_model(problem, problem.Model, spec.weights_seed(), spec.device)
        perturbed = weights.perturbed_values(model, spec.perturbation_seed())
        audit_error = _float64_outputs(model, problem, spec) if spec.audit_float64 else None
        execution.run_calls(lambda inputs: model(*inputs), problem, spec, spec.trial_seeds(), "ref", TRIAL)
        state = dict(weights.named_state(model))
        torch.save(weights.snapshot(state, weights.buffer_names(model)), state_path(Path(spec.out_dir), "ref"))
        input_sets = execution.timing_input_sets(problem, spec)
        timed = timing.time_models([model], input_sets, spec.device, timing.TimingPlan.from_dict(spec.timing))
        execution.save_timed_outputs(timed.last_outputs, spec, "ref")
        with torch.no_grad():
            for name, tensor in state.items():
                if name in perturbed:
                    tensor.copy_(perturbed[name])
        execution.run_calls(
            lambda inputs: model(*inputs), problem, spec, spec.perturbed_trial_seeds(), "ref", PERTURBED
        )
        channel.send(
            result={
                "timing_ms": timed.samples_ms[0],
                "device_info": execution.describe_device(spec.device),
                "audit_error": audit_error,
                "input_bytes": execution.tensor_bytes(input_sets[0]),
                "output_bytes": execution.tensor_bytes(timed.last_outputs[0]),
                "state_bytes": sum(t.numel() * t.element_size() for t in state.values()),
            }
        )
    except BaseException as exc:  # report every failure, then exit; the parent decides what it means
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        channel.send(error={"reason": reason, "detail": traceback.format_exc()})
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
