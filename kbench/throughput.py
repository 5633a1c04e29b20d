"""A run's throughput: jobs per hour, and where the time went, by stage (issue #18).

Stages: build (the build pool), reference, queue (a solution worker starting and waiting at its gate), run (the
solution worker building and running), judge. ``summed_s`` adds each stage over all jobs; ``critical_s`` is what
the run waited for: the pool's wall time, then each job's stages, since jobs run one after another.
"""

from __future__ import annotations

from typing import Any

from kbench.results import JobResult

# JobResult.stage_s keys -> the stage they count towards
_STAGES = {
    "reference": "reference",
    "solution_load": "queue",
    "solution_wait": "queue",
    "earlier_runs": "run",
    "solution_build": "run",
    "solution_run": "run",
    "judge": "judge",
}
STAGES = ("build", "reference", "queue", "run", "judge")


def summary(results: list[JobResult], wall_s: float, build_summed_s: float, build_wall_s: float) -> dict[str, Any]:
    summed = dict.fromkeys(STAGES, 0.0)
    critical = dict.fromkeys(STAGES, 0.0)
    summed["build"], critical["build"] = build_summed_s, build_wall_s
    for result in results:
        stages = dict.fromkeys(STAGES, 0.0)
        for key, seconds in result.stage_s.items():
            if key in _STAGES:
                stages[_STAGES[key]] += seconds
        for stage, seconds in stages.items():
            summed[stage] += seconds
        # A worker started early waits at its gate while the job before it runs, off the critical path: a job
        # waited only for what its own wall time holds beyond its other stages.
        stages["queue"] = max(0.0, result.wall_s - stages["reference"] - stages["run"] - stages["judge"])
        for stage in ("reference", "queue", "run", "judge"):
            critical[stage] += stages[stage]
    return {
        "jobs": len(results),
        "wall_s": round(wall_s, 3),
        "jobs_per_hour": round(len(results) * 3600 / wall_s, 1) if wall_s > 0 else None,
        "summed_s": {k: round(v, 3) for k, v in summed.items()},
        "critical_s": {k: round(v, 3) for k, v in critical.items()},
        "dominant": max(critical, key=lambda k: critical[k]),
    }


def line(throughput: dict[str, Any]) -> str:
    """One line for the end of a run."""
    rate = throughput["jobs_per_hour"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in throughput["critical_s"].items())
    return (
        f"throughput: {throughput['jobs']} jobs in {throughput['wall_s']:.0f} s"
        f" = {rate if rate is not None else '?'} jobs/h; on the critical path: {stages};"
        f" most time: {throughput['dominant']}"
    )
