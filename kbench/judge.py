"""Turn what a solution worker did into a verdict. Trusted side: the parent's own reading of the facts.

The worker's word is taken only where believing it cannot help a solution: a reported failure is a
failure, and a flag it raises counts against the solution, but "correct" comes only from the parent's
comparisons of saved outputs with the reference's, and only when the worker also exited cleanly.

Two steps: ``first_look`` reads what the workers reported (failures, flags, timing), which decides whether the
job must run again; ``judge_outputs`` compares the saved outputs, the costly part, which a lane may do while its
next job runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from kbench import audit
from kbench.compare import (
    Comparison,
    UnreadableOutput,
)
from kbench.config import KbenchConfig
from kbench.device_kind import on_gpu
from kbench.isolation import WorkerRun
from kbench.output_checks import compare_kind, worker_strings
from kbench.partner import Partner
from kbench.reference import ReferenceRun
from kbench.results import Verdict
from kbench.spec import TIMED, TRIAL
from kbench.stats import median_ms
from kbench.timing_verdict import TimingFacts, judge_timing, timing_mode_used
from kbench.weight_checks import WeightsMatch, read_weights, state_check, weights_check

WORKER_FAILURE_VERDICTS = {Verdict.COMPILE_ERROR, Verdict.LOAD_ERROR, Verdict.RUNTIME_ERROR}
# Integrity flags the solution worker raises itself (its in-process guards).
WORKER_FLAGS = frozenset(
    {
        "input_mutated",
        "output_aliases_input",
        "output_reused",
        "side_stream",
        "thread",
        "timer_tampering",
        "monkey_patch",
        "settings_changed",  # informational: torch's settings changed in the solution's own process
    }
)
# Flags that mean the solution broke the rules: with matching answers, the verdict is `rejected`.
INTEGRITY_FLAGS = WORKER_FLAGS - {"settings_changed"} | {
    "output_not_tensor",
    "output_tampered",
    "channel_tampering",
    "bad_timing",
    "implausible_speed",
    "reference_slowed",
    "background_work",
    "reference_tampered",
    "unchecked_weights",
}
# A measured time this far under the physics floor cannot be explained by measurement error.
FLOOR_MARGIN = 0.95


@dataclass
class Judgement:
    verdict: Verdict
    reason: str
    flags: list[str] = field(default_factory=list)
    detail: str = ""
    comparison: Comparison | None = None
    new_ms: float | None = None
    new_timing_count: int | None = None
    ref_ms: float | None = None  # the reference timed interleaved with the solution
    speedup: float | None = None
    speedup_interval: tuple[float, float] | None = None
    new_rse: float | None = None
    ref_rse: float | None = None
    new_trend: float | None = None
    ref_trend: float | None = None
    timing_warnings: list[str] = field(default_factory=list)
    timing_mode: str | None = None
    timing_fallback: str | None = None
    build_s: float | None = None
    build_cache_hit: bool | None = None
    weights: str | None = None
    new_error_fp64: float | None = None
    floor_ms: float | None = None
    kernels: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _turns_ended_under(worker: WorkerRun) -> bool:
    """The solution worker's error is the turns ending (the parent closed them, the partner being gone)."""
    error = worker.last("error")
    info = error.get("error") if error else None
    return isinstance(info, dict) and str(info.get("reason", "")).startswith("TurnsEnded")


def _failure(worker: WorkerRun, facts: dict[str, Any]) -> Judgement | None:
    """The verdict when the worker did not deliver a clean result, else None. A worker that failed in its load
    phase failed before any solution code ran (the solution is imported in the build phase): kbench's own start,
    or the host (a GPU that CUDA cannot start), not the solution's doing, so the result says so."""
    failed = _worker_failure(worker, facts)
    if failed is not None and set(worker.phase_s) <= {"load"}:
        failed.flags = sorted({*failed.flags, "harness_error"})
        failed.reason = f"kbench's worker failed before any solution code ran: {failed.reason}"
    return failed


def _worker_failure(worker: WorkerRun, facts: dict[str, Any]) -> Judgement | None:
    if worker.timed_out_phase is not None:
        where = f"the {worker.timed_out_phase} phase"
        if worker.timed_out_step is not None:
            where = f"the run phase's {worker.timed_out_step} step (timeouts.step_s)"
        return Judgement(
            Verdict.TIMEOUT,
            f"no result within {worker.timeout_s:g} s in {where}; worker process group killed",
            detail=worker.log_tail,
            **facts,
        )
    error = worker.last("error")
    if error is not None and isinstance(error.get("error"), dict):
        info = error["error"]
        try:
            verdict = Verdict(info.get("verdict", "runtime_error"))
        except ValueError:
            verdict = Verdict.RUNTIME_ERROR
        if verdict not in WORKER_FAILURE_VERDICTS:
            verdict = Verdict.RUNTIME_ERROR
        detail = f"{info.get('detail', '')}\n--- worker output ---\n{worker.log_tail}"
        return Judgement(verdict, str(info.get("reason", "worker reported an error")), detail=detail, **facts)
    result = worker.last("result")
    if result is None or worker.returncode != 0 or not isinstance(result.get("result"), dict):
        when = "after reporting a result" if result is not None else "without a result"
        return Judgement(Verdict.CRASH, f"worker {worker.exit_description()} {when}", detail=worker.log_tail, **facts)
    return None


def _timed_check(
    out_dir: Path, partner: Partner, config: KbenchConfig, notes: list[str], announced: dict[str, tuple[str, int]]
) -> Comparison:
    """The timed calls the parent kept, at random, against the reference partner's outputs for the same rounds:
    compared by the partner where it holds the solution's (``kbench.timed_comparison``; its rounds
    are the kept ones, ``Partner.failure``), else from the files."""
    if not partner.turns.kept:
        return Comparison(False, "no timed call was kept for checking: the timing turns did not finish")
    judged = partner.timed_comparison()
    if judged is not None:
        _, comparison, partner_notes = judged
        notes.extend(note for note in partner_notes if note not in notes)
        return comparison
    try:
        references, exact = partner.kept_outputs(out_dir)
    except UnreadableOutput as exc:
        return Comparison(False, f"the reference partner's timed outputs are unusable: {exc}")
    kept, announced = partner.turns.kept, partner.timed_announced(announced)
    return compare_kind(
        out_dir, TIMED, references, config.tolerance_for, announced, exact, notes, kept, config.accuracy
    )[0]


def _comparisons(
    out_dir: Path,
    reference: ReferenceRun,
    match: WeightsMatch,
    config: KbenchConfig,
    notes: list[str],
    announced: dict[str, tuple[str, int]],
    partner: Partner,
) -> tuple[Comparison, float | None, list[tuple[str, Comparison]]]:
    """The trials, then (when they pass) timed outputs, buffers and perturbed weights: (trials, the solution's
    float64 error in them, every check as (flag on failure, comparison)). The trials as the reference partner
    compared them where it read the very files the solution's worker announced (``kbench.trial_comparison``),
    else from the files."""

    def compare(kind: str, references: list[dict[str, Any]]) -> tuple[Comparison, list[dict[str, Any]]]:
        exact = reference.float64.get(kind)
        return compare_kind(
            out_dir, kind, references, config.tolerance_for, announced, exact, notes, accuracy=config.accuracy
        )

    judged = partner.trial_judgement(out_dir, announced, len(reference.trials))
    if judged is not None:
        trials, new_error, partner_notes = judged
        notes.extend(note for note in partner_notes if note not in notes)
    else:
        trials, new_trials = compare(TRIAL, reference.trials)
        exact = reference.float64.get(TRIAL)
        new_error = audit.worst_relative_error(new_trials, exact) if exact else None
    checks = [("", trials)]
    if trials.ok:
        checks.append(("timed_output_mismatch", _timed_check(out_dir, partner, config, notes, announced)))
        checks.append(("state_mismatch", state_check(out_dir, reference, match, config.tolerance_for, announced)))
        perturbed = weights_check(compare, reference, match, checks)
        if perturbed is not None:
            checks.append(perturbed)
    return trials, new_error, checks


def _audit_flags(
    reference: ReferenceRun, new_error: float | None, kernels: list[dict[str, Any]], config: KbenchConfig
) -> set[str]:
    """Precision against float64 (the solution's float64 error in the trials), kernel census."""
    flags = set()
    rules = config.integrity
    if audit.precision_loss(new_error, reference.float64_error, rules.precision_loss_factor, rules.precision_floor):
        flags.add("precision_loss")
    if kernels and not any(k.get("own") for k in kernels):
        flags.add("no_custom_kernel")
    return flags


def _verdict(
    trials: Comparison, checks: list[tuple[str, Comparison]], flags: set[str], trial_count: int
) -> tuple[Verdict, str]:
    # Wrong trial answers are `incorrect`; otherwise a broken rule is the root cause (an input the solution
    # overwrote also spoils its later outputs), so integrity flags come before the remaining mismatches.
    failures = [c for _, c in checks if not c.ok]
    if not trials.ok and not trials.not_tensor and not trials.tampered:
        return Verdict.INCORRECT, trials.reason
    if flags & INTEGRITY_FLAGS:
        bad = sorted(flags & INTEGRITY_FLAGS)
        if trials.not_tensor or trials.tampered:
            return Verdict.REJECTED, trials.reason
        # A check that could not run says itself what is missing.
        unanswered = [check.reason for flag, check in checks if flag in bad and not check.ok]
        return Verdict.REJECTED, "; ".join([f"integrity checks failed: {', '.join(bad)}", *unanswered])
    if failures:
        return Verdict.INCORRECT, failures[0].reason
    return Verdict.CORRECT, f"{trial_count} trials {trials.reason}"


@dataclass
class Sighted:
    """What a job's workers reported, read before any output is compared: enough to tell whether the job must run
    again (``only_reference_slowed``). ``judge_outputs`` compares the outputs, the costly part, and decides."""

    worker: WorkerRun
    partner: Partner
    match: WeightsMatch
    facts: dict[str, Any]
    flags: set[str]
    notes: list[str]
    detail: str
    timing: TimingFacts
    kernels: list[dict[str, Any]]
    floor: float | None

    @property
    def ref_ms(self) -> float | None:
        return self.timing.ref_ms


def only_reference_slowed(seen: Judgement | Sighted) -> TypeGuard[Sighted]:
    """The workers broke no rule but ``reference_slowed`` (the job then runs again, see ``Runner``). Read before
    the outputs are compared: a run whose outputs would have been wrong runs again too, and is judged on that run."""
    return isinstance(seen, Sighted) and seen.flags & INTEGRITY_FLAGS == {"reference_slowed"}


def first_look(
    worker: WorkerRun,
    reference: ReferenceRun,
    config: KbenchConfig,
    bandwidth_bytes_per_s: float | None,
    static_flags: list[str],
    partner: Partner,
) -> Judgement | Sighted:
    """The verdict when a worker failed; else what the workers reported (flags, timing, notes), for
    ``judge_outputs``."""
    built = worker.last("built")
    build = built["built"] if built and isinstance(built.get("built"), dict) else {}
    match = read_weights(worker.last("weights"), set(reference.tensors))
    facts: dict[str, Any] = {
        "build_s": build.get("build_s"),
        "build_cache_hit": build.get("cache_hit"),
        "weights": match.mode,
    }
    failed = _failure(worker, facts)
    reference_failed = partner.failure()
    # The partner's failure decides unless the solution failed on its own: a solution worker whose turns the
    # parent ended (the partner was gone) reports that as its error, and it is not the solution's fault.
    if reference_failed is not None and (failed is None or _turns_ended_under(worker)):
        detail = f"{partner.run.log_tail}\n--- solution worker ---\n{worker.log_tail}"
        return Judgement(Verdict.RUNTIME_ERROR, reference_failed, ["reference_failed"], detail=detail, **facts)
    if failed is not None:
        return failed
    payload = worker.last("result")["result"]  # type: ignore[index]
    flags = {flag for flag in worker_strings(payload.get("flags")) if flag in WORKER_FLAGS}
    notes: list[str] = []
    replaced = worker_strings(payload.get("replaced"))
    detail = "replaced after import: " + ", ".join(replaced) if replaced else ""
    if worker.orphans_killed:
        notes.append(f"killed {worker.orphans_killed} process(es) the solution left running after its worker")
    if worker.violations or worker.garbage_lines or not match.valid:
        flags.add("channel_tampering")  # only the solution could have written that to the private pipe
        malformed = [] if match.valid else ["weights message missing or malformed"]
        detail = "\n".join([detail, *worker.violations[:20], *malformed]).strip()

    settings = worker_strings(payload.get("settings"))
    if "settings_changed" in flags and settings:
        notes.append("ModelNew changed torch settings in its own process: " + "; ".join(settings[:20]))
    threads = worker_strings(payload.get("threads"))
    if "thread" in flags and threads:
        notes.append(
            "threads that appeared in the solution's process after its first checked call: " + ", ".join(threads[:20])
        )
    flags |= partner.flags()
    notes.extend(partner.notes())
    if partner.turns.skipped:
        notes.append(
            "not timed: the reference partner found the trials' answers wrong before the timing turns, so neither "
            "the turns nor the perturbed trials and the kernel census ran"
        )
    on_cuda = on_gpu(str(reference.device_info.get("device", "")))
    # A reference alone timed in another mode (one of them fell back to events) is no yardstick for the
    # reference beside the solution: its drift is then not judged.
    timed = partner.timing_payload()
    used = timing_mode_used(timed, config.timing.mode)
    same_mode = used is None or reference.timing_mode in (None, used[0])
    timing = judge_timing(timed, median_ms(reference.timing_ms) if same_mode else None, config, on_cuda)
    if not same_mode:
        notes.append(
            f"reference drift not judged: the reference alone was timed with {reference.timing_mode}, "
            f"beside the solution with {timing.mode}"
        )
    flags |= timing.flags | set(static_flags or [])
    floor = audit.floor_ms(reference.moved_bytes, bandwidth_bytes_per_s)
    if floor is not None and timing.new_ms is not None and timing.new_ms < FLOOR_MARGIN * floor:
        flags.add("implausible_speed")
    kernels = payload.get("kernels") if isinstance(payload.get("kernels"), list) else []
    kernels = [k for k in kernels if isinstance(k, dict)]
    return Sighted(worker, partner, match, facts, flags, notes, detail, timing, kernels, floor)


def judge_outputs(seen: Sighted, out_dir: Path, reference: ReferenceRun, config: KbenchConfig) -> Judgement:
    """Compare the outputs the workers saved in ``out_dir`` with the reference's, and decide."""
    notes, timing = list(seen.notes), seen.timing
    announced = seen.worker.outputs
    trials, new_error, checks = _comparisons(out_dir, reference, seen.match, config, notes, announced, seen.partner)
    audit_flags = _audit_flags(reference, new_error, seen.kernels, config)
    flags = seen.flags | audit_flags
    flags.update(flag for flag, check in checks if flag and not check.ok and not check.tampered)
    if any(check.tampered for _, check in checks):
        flags.add("output_tampered")
    if trials.not_tensor:
        flags.add("output_not_tensor")
    verdict, reason = _verdict(trials, checks, flags, len(reference.trials))
    if seen.partner.turns.skipped and verdict == Verdict.INCORRECT:
        # No timing broke: none was taken, the answers being wrong (turns.Interleaved.skipped). Judged otherwise
        # (the parent found the trial files right, or changed since the partner read them), the missing timing
        # stays refused, and such a job is never correct.
        flags.discard("bad_timing")
    correct = verdict == Verdict.CORRECT
    return Judgement(
        verdict,
        reason,
        flags=sorted(flags),
        detail=seen.detail,
        comparison=trials,
        new_ms=timing.new_ms,
        new_timing_count=timing.count,
        ref_ms=timing.ref_ms,
        speedup=timing.speedup if correct else None,
        speedup_interval=timing.interval if correct else None,
        new_rse=timing.new_rse,
        ref_rse=timing.ref_rse,
        new_trend=timing.new_trend,
        ref_trend=timing.ref_trend,
        timing_warnings=timing.warnings,
        timing_mode=timing.mode,
        timing_fallback=timing.fallback,
        new_error_fp64=new_error,
        floor_ms=seen.floor,
        kernels=seen.kernels,
        notes=notes,
        **seen.facts,
    )
