"""A job's result: assembled from what its workers left and how it was judged (``Runner``), or, for a solution that
never got a worker, from the build pool's or the solution text's verdict alone (``judged_without_worker``).

Trusted side.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbench import audit
from kbench.config import KbenchConfig
from kbench.isolation import WorkerRun
from kbench.judge import Judgement, Sighted
from kbench.monitor import DeviceState
from kbench.reference import ReferenceRun
from kbench.results import JobResult, Verdict
from kbench.spec import file_digest
from kbench.stats import median_ms

if TYPE_CHECKING:
    from kbench.calibrate import Ceilings
    from kbench.runner import Job


@dataclass(frozen=True)
class Attempt:
    """One solution worker's run of a job, seen by ``judge.first_look``; its outputs wait in ``out_dir``."""

    worker: WorkerRun
    seen: Judgement | Sighted
    out_dir: Path
    device_state: DeviceState  # NVML while it ran
    began: float  # time.monotonic() as its gate opened
    first_look_s: float
    turns_s: float  # the timing turns' wall time, warm-up rounds included
    turn_rounds: int
    turn_overhead_ms: dict[str, float] | None  # kbench.turns.overhead_ms


@dataclass(frozen=True)
class JobContext:
    """What a job's result needs beyond its last attempt."""

    base: dict[str, Any]  # the job's names and paths
    reference: ReferenceRun
    yardstick: ReferenceRun  # the reference alone the last attempt was held against (timed again, or not)
    ref_ms: float | None  # its median
    reruns: list[str]  # a note for each earlier run
    stages: dict[str, float]  # the reference, and the earlier runs
    started: float


def job_result(
    attempt: Attempt,
    context: JobContext,
    judged: Judgement,
    judge_s: float,
    config: KbenchConfig,
    ceilings: Ceilings | None,
) -> JobResult:
    """The job's result, once its outputs are judged: the judgement, and every fact about the job."""
    reference = context.reference
    worker, state = attempt.worker, attempt.device_state
    tolerance = config.tolerance_for(_first_dtype(reference.trials))
    comparison = judged.comparison
    floor = audit.roofline_floor_ms(reference.moved_bytes, reference.matrix_flops, ceilings)
    ref_ms = context.ref_ms
    retimed = context.yardstick is not reference
    return JobResult(
        **context.base,
        verdict=judged.verdict,
        reason=judged.reason,
        flags=judged.flags,
        max_abs_error=comparison.max_abs_error if comparison else None,
        max_rel_error=comparison.max_rel_error if comparison else None,
        atol=tolerance.atol,
        rtol=tolerance.rtol,
        ref_ms=judged.ref_ms if judged.ref_ms is not None else ref_ms,
        ref_ms_alone=ref_ms,
        compile_ms=median_ms(reference.compile_timing_ms),
        speedup_vs_compile=_speedup_vs_compile(reference, judged),
        new_ms=judged.new_ms,
        speedup=judged.speedup,
        speedup_low=judged.speedup_interval[0] if judged.speedup_interval else None,
        speedup_high=judged.speedup_interval[1] if judged.speedup_interval else None,
        ref_rse=judged.ref_rse,
        new_rse=judged.new_rse,
        ref_trend=judged.ref_trend,
        new_trend=judged.new_trend,
        # Interleaved: every round times the reference once and the solution once.
        ref_timing_count=judged.new_timing_count,
        new_timing_count=judged.new_timing_count,
        build_s=judged.build_s,
        build_cache_hit=judged.build_cache_hit,
        weights=judged.weights,
        ref_error_fp64=reference.float64_error,
        new_error_fp64=judged.new_error_fp64,
        floor_ms=judged.floor_ms,
        matrix_flops=reference.matrix_flops,
        compute_floor_ms=audit.compute_floor_ms(reference.matrix_flops, ceilings),
        roofline_fraction=floor / judged.new_ms if floor and judged.new_ms and judged.speedup else None,
        kernels=judged.kernels,
        warnings=reference.warnings + state.warnings() + judged.timing_warnings,
        device_state=asdict(state) if state.samples or state.error else {},
        notes=judged.notes + context.reruns + _reference_notes(reference, judged, retimed=retimed),
        timing_mode=judged.timing_mode,
        timing_fallback=judged.timing_fallback,
        detail=judged.detail[-20_000:],
        wall_s=time.monotonic() - context.started,
        stage_s={
            **context.stages,
            **{f"solution_{phase}": seconds for phase, seconds in worker.phase_s.items()},
            "judge": judge_s,
        },
        turns_s=attempt.turns_s,
        turn_rounds=attempt.turn_rounds,
        turn_overhead_ms=attempt.turn_overhead_ms,
        run_steps_s=worker.step_s,
    )


def judged_without_worker(
    job: Job, device: str, trials: int, verdict: str, reason: str, detail: str, build_s: float, judged_by: str
) -> JobResult:
    """The result of a job whose solution could not be loaded, as the build pool (``kbench.build_pool``) or the
    solution's text showed: no worker of its own, no reference run for it."""
    return JobResult(
        problem=job.problem.name,
        solution=job.solution.name,
        device=device,
        overrides=job.overrides,
        problem_path=str(job.problem.path),
        solution_path=str(job.solution.path),
        solution_digest=digest_or_empty(job.solution.path),
        trials=trials,
        verdict=Verdict(verdict),
        reason=reason,
        detail=detail[-20_000:],
        build_s=build_s,
        build_cache_hit=False,
        notes=[f"judged by {judged_by}: no solution worker ran"],
        stage_s={"build": build_s},
    )


def rerun_note(run: int, judged: Sighted, alone_ms: float | None, again: ReferenceRun) -> str:
    def ms(value: float | None) -> str:
        return f"{value:.4g} ms" if value is not None else "?"

    retimed = (
        f"the reference alone was timed again in a fresh trusted worker ({ms(median_ms(again.timing_ms))}), and"
        if again.error is None
        else f"timing the reference alone again failed ({again.error}), so the last yardstick stands, and"
    )
    return (
        f"run {run} broke no rule but reference_slowed (the reference took {ms(judged.ref_ms)} beside the solution, "
        f"{ms(alone_ms)} alone), so {retimed} the job ran again in a fresh worker: a solution holding the "
        "reference back does so again; a passing slowdown of the GPU or host, or an out-of-date time alone, does not"
    )


def _speedup_vs_compile(reference: ReferenceRun, judged: Judgement) -> float | None:
    """compile_ms / new_ms for a correct solution, when both were timed in the same mode."""
    compile_ms = median_ms(reference.compile_timing_ms)
    if not (compile_ms and judged.new_ms and judged.speedup) or reference.compile_timing_mode != judged.timing_mode:
        return None
    return compile_ms / judged.new_ms


def _reference_notes(reference: ReferenceRun, judged: Judgement, retimed: bool) -> list[str]:
    """``retimed``: the time alone in the result is not the cached one but was taken again (see rerun_note)."""
    notes = []
    if reference.audit_error:
        notes.append(f"float64 audit skipped: {reference.audit_error}")
    if reference.compile_error:
        notes.append(f"no torch.compile baseline: {reference.compile_error}")
    if reference.baseline_cached:
        kept = (("alone", not retimed), ("torch.compile", bool(reference.compile_timing_ms)))
        cached = [name for name, is_cached in kept if is_cached]
        if cached:
            calls, checked = len(reference.baseline_check_ms), median_ms(reference.baseline_check_ms)
            check = f", checked by {calls} calls just now ({checked:.4g} ms)" if checked and not retimed else ""
            notes.append(f"reference timings ({' and '.join(cached)}) from the baseline cache{check}")
    notes.extend(reference.baseline_notes)  # a cache entry not used, and why
    notes.extend(reference.timing_notes)
    compiled = reference.compile_timing_mode
    if compiled and judged.speedup and judged.timing_mode and compiled != judged.timing_mode:
        notes.append(
            f"no speedup_vs_compile: torch.compile timed with {compiled}, the solution with {judged.timing_mode}"
        )
    return notes


def digest_or_empty(path: Path) -> str:
    try:
        return file_digest(path)
    except OSError:
        return ""  # an unreadable solution fails in its worker, with its own reason


def _first_dtype(outputs: list[dict[str, Any]]) -> str:
    for record in outputs:
        for tensor in record.get("tensors", []):
            return str(tensor.dtype).removeprefix("torch.")
    return "float32"
