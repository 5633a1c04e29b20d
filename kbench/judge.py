"""Turn what a solution worker did into a verdict. Trusted side: the parent's own reading of the facts.

The worker's word is taken only where believing it cannot help a solution: a reported failure is a
failure, and a flag it raises counts against the solution, but "correct" comes only from the parent's
comparisons of saved outputs with the reference's, and only when the worker also exited cleanly.
"""

from __future__ import annotations

import io
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kbench import audit
from kbench.compare import (
    Comparison,
    UnreadableOutput,
    compare_records,
    compare_tensor,
    load_outputs,
    merge,
    rounded_like,
)
from kbench.config import KbenchConfig, Tolerance
from kbench.isolation import WorkerRun
from kbench.reference import ReferenceRun
from kbench.results import Verdict
from kbench.spec import PERTURBED, TIMED, TRIAL, bytes_digest, output_path, state_path
from kbench.stats import median_ms
from kbench.timing_verdict import judge_timing, timing_mode_used

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
    }
)
# Flags that mean the solution broke the rules: with matching answers, the verdict is `rejected`.
INTEGRITY_FLAGS = WORKER_FLAGS | {
    "output_not_tensor",
    "output_tampered",
    "channel_tampering",
    "bad_timing",
    "implausible_speed",
    "reference_slowed",
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


def only_reference_slowed(judged: Judgement) -> bool:
    """Rejected for ``reference_slowed`` and for no other broken rule."""
    return judged.verdict == Verdict.REJECTED and set(judged.flags) & INTEGRITY_FLAGS == {"reference_slowed"}


def _strings(value: Any) -> list[str]:
    """A list of strings from the worker, or nothing: what arrives on the pipe may have been forged."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


class TamperedOutput(UnreadableOutput):
    """A solution output file that is not what the worker announced when it wrote it."""


def read_announced(path: Path, announced: dict[str, tuple[str, int]]) -> bytes:
    """A solution file's bytes, only if they are still what the worker announced when it wrote them (digest
    and size): a file rewritten later (by an exit hook, say), replaced by a link or a device, or never
    announced is refused. Read once, then checked and loaded from memory, so what is checked is what is
    loaded; nothing larger than announced is read."""
    if path.name not in announced:
        if path.exists():
            raise TamperedOutput(f"{path.name} was never announced by the worker")
        raise UnreadableOutput(f"no output file {path.name}")
    digest, size = announced[path.name]
    try:
        status = path.lstat()
        if not stat.S_ISREG(status.st_mode) or status.st_size != size:
            raise TamperedOutput(f"{path.name} changed after the worker wrote it")
        content = path.read_bytes()
    except OSError:
        raise TamperedOutput(f"{path.name} was removed after the worker wrote it") from None
    if len(content) != size or bytes_digest(content) != digest:
        raise TamperedOutput(f"{path.name} changed after the worker wrote it")
    return content


def load_announced(path: Path, announced: dict[str, tuple[str, int]]) -> dict[str, Any]:
    return load_outputs(path, read_announced(path, announced))


def compare_kind(
    out_dir: Path,
    kind: str,
    references: list[dict[str, Any]],
    tolerance_for: Callable[[str], Tolerance],
    announced: dict[str, tuple[str, int]],
    exact: list[dict[str, Any]] | None = None,
    notes: list[str] | None = None,
) -> tuple[Comparison, list[dict[str, Any]]]:
    """Compare each saved solution output of one kind with the reference output the parent holds. With the
    reference's float64 evaluation of the same calls (``exact``), an output outside tolerance of the fp32
    reference passes when it is within tolerance of the float64 one: the fp32 reference's own rounding must
    not fail a more exact answer. Each such pass is written to ``notes``."""
    so_far = Comparison(True, "within tolerance", 0.0, 0.0)
    loaded = []
    passed_by_float64: list[str] = []  # why each output that passed only against float64 failed against fp32
    for index, ref in enumerate(references):
        try:
            new = load_announced(output_path(out_dir, "new", kind, index), announced)
        except TamperedOutput as exc:
            return merge(so_far, Comparison(False, f"{kind} {index}: {exc}", tampered=True)), loaded
        except UnreadableOutput as exc:
            return merge(so_far, Comparison(False, f"{kind} {index}: {exc}", not_tensor=True)), loaded
        loaded.append(new)
        result = compare_records(new, ref, tolerance_for)
        if not result.ok and not result.not_tensor and exact and index < len(exact):
            versus_exact = compare_records(new, rounded_like(exact[index], ref), tolerance_for)
            if versus_exact.ok:
                passed_by_float64.append(f"{kind} {index}: {result.reason}")
                result = versus_exact
        if not result.ok:
            result.reason = f"{kind} {index}: {result.reason}"
        so_far = merge(so_far, result)
        if not so_far.ok:
            break
    if passed_by_float64 and notes is not None:
        notes.append(
            f"{len(passed_by_float64)} {kind} output(s) within tolerance of the float64 evaluation but not of the "
            f"fp32 reference; first: {passed_by_float64[0]}"
        )
    return so_far, loaded


def compare_state(
    out_dir: Path,
    reference: dict[str, torch.Tensor],
    tolerance_for: Callable[[str], Tolerance],
    announced: dict[str, tuple[str, int]],
) -> str:
    """Empty when ModelNew's buffers after the trials match the reference's; else what differs."""
    try:
        content = read_announced(state_path(out_dir, "new"), announced)
    except UnreadableOutput:
        return "buffers file missing, or changed after the worker wrote it"
    try:
        new = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as exc:
        return f"buffers unreadable: {exc}".splitlines()[0]
    if not isinstance(new, dict):
        return "buffers file holds no buffers"
    for name, ref in reference.items():
        if name not in new or type(new[name]) is not torch.Tensor:
            return f"buffer {name} missing"
        result = compare_tensor(new[name], ref, tolerance_for)
        if not result.ok:
            return f"buffer {name}: {result.reason}"
    return ""


def _failure(worker: WorkerRun, facts: dict[str, Any]) -> Judgement | None:
    """The verdict when the worker did not deliver a clean result, else None."""
    if worker.timed_out_phase is not None:
        return Judgement(
            Verdict.TIMEOUT,
            f"no result within {worker.timeout_s:g} s in the {worker.timed_out_phase} phase; "
            "worker process group killed",
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


def _comparisons(
    out_dir: Path,
    reference: ReferenceRun,
    weights_mode: str | None,
    config: KbenchConfig,
    notes: list[str],
    announced: dict[str, tuple[str, int]],
) -> tuple[Comparison, list[dict[str, Any]], list[tuple[str, Comparison]]]:
    """The trials, then (when they pass) timed outputs, buffers and perturbed weights: (trials, the solution's
    trial outputs, every check as (flag on failure, comparison))."""

    def compare(kind: str, references: list[dict[str, Any]]) -> tuple[Comparison, list[dict[str, Any]]]:
        exact = reference.float64.get(kind)
        return compare_kind(out_dir, kind, references, config.tolerance_for, announced, exact, notes)

    trials, new_trials = compare(TRIAL, reference.trials)
    checks = [("", trials)]
    if trials.ok:
        checks.append(("timed_output_mismatch", compare(TIMED, reference.timed)[0]))
    if trials.ok and weights_mode in ("by_name", "by_position"):
        state_problem = compare_state(out_dir, reference.state, config.tolerance_for, announced)
        checks.append(("state_mismatch", Comparison(not state_problem, state_problem or "buffers match")))
        checks.append(("stale_weights", compare(PERTURBED, reference.perturbed)[0]))
    elif trials.ok:
        notes.append("weights matched by seed only: buffer state and perturbed-weight checks skipped")
    return trials, new_trials, checks


def _audit_flags(
    reference: ReferenceRun,
    new_trials: list[dict[str, Any]],
    new_ms: float | None,
    floor: float | None,
    kernels: list[dict[str, Any]],
    config: KbenchConfig,
) -> tuple[set[str], float | None]:
    """Physics floor, precision against float64, kernel census: (flags, the solution's float64 error)."""
    flags = set()
    if floor is not None and new_ms is not None and new_ms < FLOOR_MARGIN * floor:
        flags.add("implausible_speed")
    exact = reference.float64.get(TRIAL)
    new_error = audit.worst_relative_error(new_trials, exact) if exact else None
    rules = config.integrity
    if audit.precision_loss(new_error, reference.float64_error, rules.precision_loss_factor, rules.precision_floor):
        flags.add("precision_loss")
    if kernels and not any(k.get("own") for k in kernels):
        flags.add("no_custom_kernel")
    return flags, new_error


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
        own_reason = trials.not_tensor or trials.tampered
        return Verdict.REJECTED, trials.reason if own_reason else f"integrity checks failed: {', '.join(bad)}"
    if failures:
        return Verdict.INCORRECT, failures[0].reason
    return Verdict.CORRECT, f"{trial_count} trials {trials.reason}"


def judge(
    worker: WorkerRun,
    out_dir: Path,
    reference: ReferenceRun,
    config: KbenchConfig,
    bandwidth_bytes_per_s: float | None = None,
    static_flags: list[str] | None = None,
) -> Judgement:
    built = worker.last("built")
    build = built["built"] if built and isinstance(built.get("built"), dict) else {}
    weights_msg = worker.last("weights")
    weights_mode = weights_msg.get("weights") if weights_msg else None
    facts: dict[str, Any] = {
        "build_s": build.get("build_s"),
        "build_cache_hit": build.get("cache_hit"),
        "weights": weights_mode,
    }
    failed = _failure(worker, facts)
    if failed is not None:
        return failed
    payload = worker.last("result")["result"]  # type: ignore[index]
    flags = {flag for flag in _strings(payload.get("flags")) if flag in WORKER_FLAGS}
    notes: list[str] = []
    replaced = _strings(payload.get("replaced"))
    detail = "replaced after import: " + ", ".join(replaced) if replaced else ""
    if worker.orphans_killed:
        notes.append(f"killed {worker.orphans_killed} process(es) the solution left running after its worker")
    if worker.violations or worker.garbage_lines:
        flags.add("channel_tampering")  # only the solution could have written that to the private pipe
        detail = "\n".join([detail, *worker.violations[:20]]).strip()

    trials, new_trials, checks = _comparisons(out_dir, reference, weights_mode, config, notes, worker.outputs)
    on_cuda = str(reference.device_info.get("device", "")).startswith("cuda")
    # A reference alone timed in another mode (one of them fell back to events) is no yardstick for the
    # reference beside the solution: its drift is then not judged.
    used = timing_mode_used(payload, config.timing.mode)
    same_mode = used is None or reference.timing_mode in (None, used[0])
    timing = judge_timing(payload, median_ms(reference.timing_ms) if same_mode else None, config, on_cuda)
    if not same_mode:
        notes.append(
            f"reference drift not judged: the reference alone was timed with {reference.timing_mode}, "
            f"beside the solution with {timing.mode}"
        )
    flags |= timing.flags
    floor = audit.floor_ms(reference.moved_bytes, bandwidth_bytes_per_s)
    kernels = payload.get("kernels") if isinstance(payload.get("kernels"), list) else []
    kernels = [k for k in kernels if isinstance(k, dict)]
    audit_flags, new_error = _audit_flags(reference, new_trials, timing.new_ms, floor, kernels, config)
    flags |= audit_flags | set(static_flags or [])
    flags.update(flag for flag, check in checks if flag and not check.ok and not check.tampered)
    if any(check.tampered for _, check in checks):
        flags.add("output_tampered")
    if trials.not_tensor:
        flags.add("output_not_tensor")
    verdict, reason = _verdict(trials, checks, flags, len(reference.trials))
    correct = verdict == Verdict.CORRECT
    return Judgement(
        verdict,
        reason,
        flags=sorted(flags),
        detail=detail,
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
        floor_ms=floor,
        kernels=kernels,
        notes=notes,
        **facts,
    )
