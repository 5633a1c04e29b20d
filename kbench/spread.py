"""How much a job's timings move between runs: the same problem and solution in several runs (back to back, or
in different timing modes), each median's spread across them. Trusted side: reads finished results only.

The spread of a list of medians is (max − min) / median. It is set beside the largest within-run relative
standard error of those medians: a spread well above it means the runs differ (clocks, power, another
process, a changed solution), not that too few samples were taken.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import pandas as pd

from kbench.results import JobResult, Verdict


@dataclass
class Spread:
    problem: str
    solution: str
    runs: list[str]  # the runs that timed this job, in the order given
    timing_modes: list[str]
    new_ms: list[float]
    ref_ms: list[float]  # the reference timed beside the solution
    speedup: list[float]
    new_rse_max: float | None
    missing: list[str] = field(default_factory=list)  # runs where the job is absent or was not timed correct
    solution_changed: bool = False  # the solution file differs between the runs: its spread is not noise
    # What NVML saw in each run (CUDA): the mean SM clock while the GPU was busy (None where not recorded), and
    # the runs in which it reported the GPU slowed. Medians that move with the clock moved with the device.
    busy_clock_mhz: list[float | None] = field(default_factory=list)
    throttled_in: list[str] = field(default_factory=list)

    @property
    def new_spread(self) -> float:
        return relative_spread(self.new_ms)

    @property
    def ref_spread(self) -> float:
        return relative_spread(self.ref_ms)

    @property
    def speedup_spread(self) -> float:
        return relative_spread(self.speedup)

    def within(self, bound: float) -> bool:
        """Whether the solution's median moved by at most ``bound`` (relative) across the runs."""
        return self.new_spread <= bound


def relative_spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def _timed(result: JobResult) -> bool:
    return result.verdict == Verdict.CORRECT and bool(result.new_ms and result.ref_ms and result.speedup)


def spreads(runs: dict[str, list[JobResult]]) -> list[Spread]:
    """One Spread per (problem, solution) timed correct in at least two of the runs, sorted by name."""
    timed: dict[tuple[str, str], dict[str, JobResult]] = {}
    for run_id, results in runs.items():
        for result in results:
            if _timed(result):
                timed.setdefault((result.problem, result.solution), {})[run_id] = result
    found = []
    for (problem, solution), by_run in sorted(timed.items()):
        if len(by_run) < 2:
            continue
        order = [run_id for run_id in runs if run_id in by_run]
        jobs = [by_run[run_id] for run_id in order]
        rses = [job.new_rse for job in jobs if job.new_rse is not None]
        digests = {job.solution_digest for job in jobs if job.solution_digest}
        found.append(
            Spread(
                problem,
                solution,
                order,
                [job.timing_mode or "events" for job in jobs],
                [job.new_ms for job in jobs if job.new_ms],
                [job.ref_ms for job in jobs if job.ref_ms],
                [job.speedup for job in jobs if job.speedup],
                max(rses) if rses else None,
                [run_id for run_id in runs if run_id not in by_run],
                len(digests) > 1,
                busy_clock_mhz=[job.device_state.get("sm_clock_mhz_busy_mean") for job in jobs],
                throttled_in=[
                    run_id for run_id, job in zip(order, jobs, strict=True) if job.device_state.get("throttle")
                ],
            )
        )
    return found


def spread_frame(found: list[Spread]) -> pd.DataFrame:
    rows = [
        {
            "problem": s.problem,
            "solution": s.solution,
            "runs": ";".join(s.runs),
            "timing_modes": ";".join(s.timing_modes),
            "new_ms": ";".join(f"{v:.6g}" for v in s.new_ms),
            "new_spread": s.new_spread,
            "ref_ms": ";".join(f"{v:.6g}" for v in s.ref_ms),
            "ref_spread": s.ref_spread,
            "speedup": ";".join(f"{v:.6g}" for v in s.speedup),
            "speedup_spread": s.speedup_spread,
            "new_rse_max": s.new_rse_max,
            "busy_clock_mhz": ";".join("" if v is None else f"{v:.0f}" for v in s.busy_clock_mhz),
            "throttled_in": ";".join(s.throttled_in),
            "missing_from": ";".join(s.missing),
            "solution_changed": s.solution_changed,
        }
        for s in found
    ]
    return pd.DataFrame(rows)
