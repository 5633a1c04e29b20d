"""Trusted worker: the reference's side of one job's interleaved timing (``kbench.turns``).

It imports the problem file and nothing a solution wrote, builds the reference with the seeded weights, and takes
turns with the job's solution worker as the parent commands: one reference call per round, on the round's fresh
inputs. It keeps its outputs of the rounds the parent keeps, the solution's outputs of those rounds, copied out of
the solution's staging buffer as they were kept (``kbench.handoff``), and, after the turns, the same rounds evaluated
in float64 (the second evaluation every output is judged against; see ``reference_worker.Float64Audit``). Where it
holds the solution's output of every kept round it compares them itself (``kbench.timed_comparison``); otherwise it
saves them for the parent. It runs while the solution runs, so its files are announced with their digests like the
solution's: a file rewritten later is refused.
Usage (by the parent only): ``python -m kbench.reference_partner SPEC_JSON CHANNEL_FD GATE_FD TURN_FDS...``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

from kbench.channel import Channel, wait_at_gate
from kbench.spec import TIMED, WorkerSpec, float64_kind, output_path


def _float64_rounds(
    model: Any, problem: Any, spec: WorkerSpec, served: Any, kept: dict[int, Any]
) -> tuple[dict[int, dict[str, Any]], str | None]:
    """The kept rounds evaluated in float64 (the model as it is after the turns), and why not, when it failed. Each
    is kept as the parent keeps it (``compare.exact_record``): rounded to fp32 where the reference's output is fp32,
    with PyTorch fp32's own error on each output, measured here on the device against the round's fp32 output
    (``kept``) at full precision. Saved, the parent then reads half the bytes and measures nothing."""
    import torch

    from kbench import execution
    from kbench.compare import exact_record
    from kbench.reference_worker import Float64Audit

    records: dict[int, dict[str, Any]] = {}

    def calls(forward64: Any) -> None:
        for index in served.kept:
            inputs = execution.seeded_inputs(problem, spec.timing_seed(index), spec.device, served.inputs_on)
            with torch.no_grad():
                output = forward64(inputs)
            fp32 = execution.pack_outputs(kept[index], on_cpu=False)
            records[index] = exact_record(execution.pack_outputs(output, on_cpu=False), fp32, narrow=True)

    audit = Float64Audit(spec.audit_float64)
    audit.run(model, calls)
    return ({} if audit.error else records), audit.error


def _judged_here(
    served: Any, own: dict[int, Any], adopted: dict[int, Any], exact: Any, spec: WorkerSpec
) -> tuple[dict[str, Any] | None, str | None]:
    """The kept rounds compared here, on the device (``kbench.timed_comparison``), when the solution's output of
    every one of them was copied out of its process; else None, and the files are saved for the parent. Also why
    the comparison failed, when it did (short of memory, say): the parent then compares the files."""
    if not served.kept or not spec.judging or not all(k in adopted for k in served.kept):
        return None, None
    from kbench.timed_comparison import compare_in_place

    try:
        return compare_in_place(served.kept, own, adopted, exact or None, spec.judging), None
    except Exception as exc:
        return None, _why(exc)


def _save_rounds(
    spec: WorkerSpec, served: Any, own: dict[int, Any], adopted: dict[int, Any], exact: Any, channel: Channel
) -> None:
    """The kept rounds' records as files for the parent: the partner's outputs, the solution's it adopted, and the
    float64 evaluations."""
    from kbench import execution

    out_dir = Path(spec.out_dir)
    for index in served.kept:
        execution.save_outputs(own[index], output_path(out_dir, "ref", TIMED, index), channel)
        if index in adopted:
            execution.save_outputs(adopted[index], output_path(out_dir, "new", TIMED, index), channel)
        if index in exact:
            execution.save_record(exact[index], output_path(out_dir, "ref", float64_kind(TIMED), index), channel)


def _reference_trials(model: Any, problem: Any, spec: WorkerSpec) -> tuple[Any, Any] | str:
    """The reference's trials and their float64 evaluations, made as the reference worker makes them, for
    ``kbench.trial_comparison``; or why there are none: the parent then compares the solution's trial files."""
    from kbench.reference_worker import Float64Audit, evaluated

    try:
        return evaluated(model, problem, spec, spec.trial_seeds(), Float64Audit(spec.audit_float64))
    except Exception as exc:
        return _why(exc)


def _trials_judged_here(spec: WorkerSpec, trials: tuple[Any, Any] | str) -> tuple[dict[str, Any] | None, str | None]:
    """The solution's trial files compared here, on the device, and why not, when they were not."""
    if isinstance(trials, str):
        return None, trials
    from kbench.trial_comparison import judge_trial_files

    try:
        return judge_trial_files(spec, *trials), None
    except Exception as exc:
        return None, _why(exc)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def main(spec_path: str, fd: str, gate_fd: str, command_fd: str, reply_fd: str) -> None:
    channel = Channel(int(fd))  # the worker starts in the "load" phase
    try:
        from kbench import execution
        from kbench.trial_comparison import wrong_answers
        from kbench.turn_taker import TurnPipe, serve

        spec = WorkerSpec.read(Path(spec_path))
        problem = execution.load_problem(spec)
        model = execution.seeded_model(problem, problem.Model, spec.weights_seed(), "cpu")
        wait_at_gate(gate_fd, channel)
        channel.phase("turns")
        model = model.to(spec.device)
        trials = _reference_trials(model, problem, spec)  # while the solution's worker makes its own

        own: dict[int, Any] = {}  # kept round -> its output, on the device
        adopted: dict[int, Any] = {}  # ... -> the solution's output of it, copied out of its process

        compared: list[tuple[dict[str, Any] | None, str | None]] = []  # the trials' comparison, once made

        def check() -> bool | None:
            """Asked before the turns, when both workers' trials are done: a solution whose answers are wrong
            already is not timed (its verdict is ``incorrect`` whatever the rest shows)."""
            compared.append(_trials_judged_here(spec, trials))
            judged = compared[0][0]
            return None if judged is None else wrong_answers(judged)

        pipe = TurnPipe(int(command_fd), int(reply_fd))
        served = serve(
            model, problem, spec, pipe, own.__setitem__, watched=False, keep_adopted=adopted.__setitem__, check=check
        )
        exact, audit_error = _float64_rounds(model, problem, spec, served, own)
        timed, timed_error = _judged_here(served, own, adopted, exact, spec)
        if timed is None:
            _save_rounds(spec, served, own, adopted, exact, channel)
        del own, adopted, exact  # the device memory the trials' comparison needs
        judged, trials_error = compared[0] if compared else _trials_judged_here(spec, trials)
        channel.send(
            result={
                "rounds": served.rounds,
                "kept": served.kept,
                "audit_error": audit_error,
                "timed": timed,
                "timed_error": timed_error,
                "trials": judged,
                "trials_error": trials_error,
            }
        )
    except BaseException as exc:  # the parent decides what it means (the turns may simply have been ended)
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        channel.send(error={"reason": reason, "detail": traceback.format_exc()})
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:6])
