"""Job results: the verdict contract and the append-only JSONL file a run writes as each job ends."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

# The start of the warning a job gets when its timed calls drifted (timing_verdict); the display groups them by it.
SPEED_CHANGED = "the device's speed changed while it was timed"


class Verdict(StrEnum):
    CORRECT = "correct"
    INCORRECT = "incorrect"  # ran, answers differ
    REJECTED = "rejected"  # answers match but an integrity check failed
    COMPILE_ERROR = "compile_error"
    LOAD_ERROR = "load_error"  # import/syntax error, no ModelNew
    RUNTIME_ERROR = "runtime_error"  # exception in init or forward, CUDA error, OOM
    TIMEOUT = "timeout"
    CRASH = "crash"  # the worker died, or exited without a result


@dataclass
class JobResult:
    """Everything kbench knows about one (problem, solution) job. Field names are the public contract."""

    problem: str
    solution: str
    verdict: Verdict
    reason: str
    device: str
    gpu: str | None = None  # which GPU ran the job, where it ran on one: "cuda:2 NVIDIA H200 @ host"
    flags: list[str] = field(default_factory=list)
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    atol: float | None = None
    rtol: float | None = None
    ref_ms: float | None = None  # reference median, timed interleaved with the solution
    new_ms: float | None = None
    speedup: float | None = None  # ref_ms / new_ms, for correct solutions only
    speedup_low: float | None = None  # 95 % interval (paired bootstrap over timing rounds)
    speedup_high: float | None = None
    ref_ms_alone: float | None = None  # reference median in the trusted worker, timed alone
    compile_ms: float | None = None  # torch.compile(Model) median in the trusted worker
    speedup_vs_compile: float | None = None  # compile_ms / new_ms, for correct solutions only
    ref_rse: float | None = None  # relative standard error of each median
    new_rse: float | None = None
    # Each median's trend while it was timed (second half of the rounds against the first, stats.median_trend)
    ref_trend: float | None = None
    new_trend: float | None = None
    ref_timing_count: int | None = None
    new_timing_count: int | None = None
    timing_mode: str | None = None  # how ref_ms and new_ms were timed: events | graph | kernel (docs/timing.md)
    timing_fallback: str | None = None  # why the configured mode could not be used (then timing_mode is events)
    build_s: float | None = None
    build_cache_hit: bool | None = None
    weights: str | None = None  # by_name | by_position | by_value | partial | none (kbench.weights)
    ref_error_fp64: float | None = None  # PyTorch fp32's relative error against a float64 reference
    new_error_fp64: float | None = None  # the solution's relative error against the same float64 reference
    floor_ms: float | None = None  # least time the problem's bytes take at peak memory bandwidth
    matrix_flops: int | None = None  # the reference's matrix-product operations per call (torch's FlopCounterMode)
    compute_floor_ms: float | None = None  # matrix_flops at the fastest measured rate; needs `kbench calibrate`
    # max(bytes / measured copy bandwidth, compute_floor_ms) / new_ms: 1.0 = at the roofline floor
    roofline_fraction: float | None = None
    kernels: list[dict[str, Any]] = field(default_factory=list)  # CUDA kernel census of one forward call
    # about the problem (degenerate), the device (throttling), or a median that moved while it was timed
    warnings: list[str] = field(default_factory=list)
    device_state: dict[str, Any] = field(default_factory=dict)  # NVML while the solution worker ran (CUDA)
    notes: list[str] = field(default_factory=list)  # checks that could not run, and why
    trials: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    solution_path: str = ""
    solution_digest: str = ""  # BLAKE2b of the solution file as judged: tells runs of changed code apart
    problem_path: str = ""
    detail: str = ""  # compiler / Python error text, kept for the user
    wall_s: float = 0.0
    # The timing turns from first round to last, hand-overs included (they overlap the stages), and their rounds,
    # warm-up included: what a round costs beyond its two calls (docs/timing.md).
    turns_s: float | None = None
    turn_rounds: int | None = None
    # Each side's median time per timed turn outside its own sample (the parent's clock from "go" to "done", less
    # the sample): {"reference": ms, "solution": ms}. A solution whose samples leave out part of its calls stands
    # well above the reference here; recorded, not yet judged (docs/verdicts.md, "Known limits").
    turn_overhead_ms: dict[str, float] | None = None
    # Where wall_s went: the reference, the solution worker's phases (load, build, run), judging, and for a job
    # run again (see timing.reference_drift_retries) its earlier runs (earlier_runs).
    # Seconds per stage within wall_s; "build_wait" (the scheduler waiting for the solution's build) comes before it.
    # Judged beside the lane's next job (pipeline.judge_beside), "judge_wait" is how long the judgement waited for
    # the one before it to end.
    stage_s: dict[str, float] = field(default_factory=dict)
    # The solution worker's run (stage_s["solution_run"]) by step (kbench.isolation.RUN_STEPS), as the worker marked
    # them: weights, trials, turns (with saving the kept outputs), perturbed, census.
    run_steps_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # JSON has no NaN/Infinity; a non-finite number is recorded as "unknown" rather than breaking the file.
        return {k: _finite_or_none(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["verdict"] = Verdict(values["verdict"])
        return cls(**values)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ResultsFile:
    """One JSON object per finished job, flushed and fsynced as each job ends so a killed run loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, result: JobResult) -> None:
        line = json.dumps(result.to_dict(), allow_nan=False, default=str)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[JobResult]:
        """Each job's latest result, in the order the jobs first finished: a job that ``--resume`` ran again
        (kbench had failed it, ``harness_error``) is reported by its new line; the file keeps both."""
        if not self.path.exists():
            return []
        latest: dict[tuple[str, str], JobResult] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            # A run killed mid-write can leave a torn last line; every complete line is still a result.
            try:
                result = JobResult.from_dict(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            latest[(result.problem, result.solution)] = result
        return list(latest.values())
