"""Turn what a solution worker did into a verdict. Trusted side: the parent's own reading of the facts.

The worker's word is taken only where believing it cannot help a solution: a reported failure is a
failure, but "correct" comes only from the parent's comparison of saved outputs, and only when the worker
also exited cleanly after reporting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbench.compare import Comparison, UnreadableOutput, compare_records, load_outputs, merge
from kbench.config import Tolerance
from kbench.isolation import WorkerRun
from kbench.results import Verdict
from kbench.spec import output_path
from kbench.timing import median_ms

WORKER_FAILURE_VERDICTS = {Verdict.COMPILE_ERROR, Verdict.LOAD_ERROR, Verdict.RUNTIME_ERROR}


@dataclass
class Judgement:
    verdict: Verdict
    reason: str
    flags: list[str] = field(default_factory=list)
    detail: str = ""
    comparison: Comparison | None = None
    new_ms: float | None = None
    new_timing_count: int | None = None
    build_s: float | None = None
    build_cache_hit: bool | None = None
    weights: str | None = None


def _valid_samples(samples: Any, expected: int) -> list[float] | None:
    if not isinstance(samples, list) or len(samples) != expected:
        return None
    if not all(isinstance(s, int | float) and math.isfinite(s) and s > 0 for s in samples):
        return None
    return [float(s) for s in samples]


def compare_trials(
    out_dir: Path, references: list[dict[str, Any]], tolerance_for: Callable[[str], Tolerance]
) -> Comparison:
    """Compare each trial's saved solution output with the reference output the parent holds in memory."""
    so_far = Comparison(True, "within tolerance", 0.0, 0.0)
    for trial, ref in enumerate(references):
        try:
            new = load_outputs(output_path(out_dir, "new", trial))
        except UnreadableOutput as exc:
            return merge(so_far, Comparison(False, f"trial {trial}: {exc}", not_tensor=True))
        result = compare_records(new, ref, tolerance_for)
        if not result.ok:
            result.reason = f"trial {trial}: {result.reason}"
        so_far = merge(so_far, result)
        if not so_far.ok:
            break
    return so_far


def judge(
    worker: WorkerRun,
    out_dir: Path,
    references: list[dict[str, Any]],
    repeats: int,
    tolerance_for: Callable[[str], Tolerance],
) -> Judgement:
    built = worker.last("built")
    build = built["built"] if built and isinstance(built.get("built"), dict) else {}
    weights_msg = worker.last("weights")
    facts: dict[str, Any] = {
        "build_s": build.get("build_s"),
        "build_cache_hit": build.get("cache_hit"),
        "weights": weights_msg.get("weights") if weights_msg else None,
    }

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
    if result is None or worker.returncode != 0:
        when = "after reporting a result" if result is not None else "without a result"
        return Judgement(Verdict.CRASH, f"worker {worker.exit_description()} {when}", detail=worker.log_tail, **facts)

    flags: list[str] = []
    if worker.count("result") > 1 or worker.garbage_lines:
        flags.append("channel_tampering")  # only the solution could have written that to the private pipe
    comparison = compare_trials(out_dir, references, tolerance_for)
    samples = _valid_samples(result["result"].get("timing_ms") if isinstance(result["result"], dict) else None, repeats)
    if samples is None:
        flags.append("bad_timing")
    if comparison.not_tensor:
        flags.append("output_not_tensor")
        verdict, reason = Verdict.REJECTED, comparison.reason
    elif not comparison.ok:
        verdict, reason = Verdict.INCORRECT, comparison.reason
    elif flags:
        verdict, reason = Verdict.REJECTED, f"outputs match, but integrity checks failed: {', '.join(flags)}"
    else:
        verdict, reason = Verdict.CORRECT, f"{len(references)} trials {comparison.reason}"
    return Judgement(
        verdict,
        reason,
        flags=flags,
        comparison=comparison,
        new_ms=median_ms(samples) if samples else None,
        new_timing_count=len(samples) if samples else None,
        **facts,
    )
