"""Trusted worker: computes the reference outputs and times the reference ``Model``.

It imports the problem file and nothing else a solution wrote, so its outputs are what the solution is
judged against. Usage (by the parent only): ``python -m kbench.reference_worker SPEC_JSON CHANNEL_FD``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from kbench.channel import Channel
from kbench.spec import WorkerSpec


def main(spec_path: str, fd: str) -> None:
    channel = Channel(int(fd))
    channel.phase("load")
    try:
        from kbench import execution, timing

        spec = WorkerSpec.read(Path(spec_path))
        problem = execution.load_problem(spec)
        channel.phase("run")
        model = execution.seeded_model(problem, problem.Model, spec.weights_seed(), spec.device)
        execution.run_trials(model, problem, spec, role="ref")
        samples = timing.time_calls(
            model,
            execution.timing_input_sets(problem, spec),
            spec.device,
            timing.TimingPlan.from_dict(spec.timing),
        )
        channel.send(result={"timing_ms": samples, "device_info": execution.describe_device(spec.device)})
    except BaseException as exc:  # report every failure, then exit; the parent decides what it means
        channel.send(error={"reason": f"{type(exc).__name__}: {exc}".splitlines()[0], "detail": traceback.format_exc()})
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
