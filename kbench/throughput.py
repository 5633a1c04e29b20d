"""A run's throughput: jobs per hour, and where the time went, by stage (issue #18).

Stages: build, reference, queue (a solution worker starting and waiting at its gate), run (the solution worker
building and running), judge. ``summed_s`` adds each stage over all jobs (build: the build pool's workers).
``critical_s`` is what the run waited for: on the busiest device (lane), its jobs' stages one after another, as
build the time it waited for builds that had not ended (builds run beside the jobs), and as judge, where jobs
were judged beside the next (``pipeline.judge_beside``), the time the lane waited for their judgements. The
references a one-device run checks side by side before its first job (``References.prepare``) count as reference
time, summed and on the critical path: no job's own stages hold them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kbench.results import JobResult

if TYPE_CHECKING:
    from kbench.references import Prepared

# JobResult.stage_s keys -> the stage they count towards
_STAGES = {
    "build_wait": "build",
    "reference": "reference",
    "references_ahead": "reference",  # references a lane ran for its coming jobs while it waited for a build
    "solution_load": "queue",
    "solution_wait": "queue",
    "earlier_runs": "run",
    "solution_build": "run",
    "solution_run": "run",
    "judge": "judge",
}
STAGES = ("build", "reference", "queue", "run", "judge")


def _lane_stages(results: list[JobResult]) -> dict[str, float]:
    """One lane's stages on its own critical path: its jobs ran one after another (``results`` in that order)."""
    critical = dict.fromkeys(STAGES, 0.0)
    last_beside = None
    for result in results:
        stages = _stages(result)
        # Judged beside (while the lane's next job ran): the lane waited only ``judge_wait``, before handing the
        # job over, for the judgement before it; and at its end for its last one.
        judge_wait = result.stage_s.get("judge_wait")
        # A worker started early waits at its gate while the job before it runs, off the critical path: a job
        # waited only for what its own wall time holds beyond its other stages.
        other = stages["reference"] + stages["run"] + stages["judge"] + (judge_wait or 0.0)
        stages["queue"] = max(0.0, result.wall_s - other)
        if judge_wait is not None:
            last_beside, stages["judge"] = stages["judge"], judge_wait
        for stage in STAGES:
            critical[stage] += stages[stage]
    critical["judge"] += last_beside or 0.0
    return critical


def _stages(result: JobResult) -> dict[str, float]:
    stages = dict.fromkeys(STAGES, 0.0)
    for key, seconds in result.stage_s.items():
        if key in _STAGES:
            stages[_STAGES[key]] += seconds
    return stages


def summary(
    results: list[JobResult],
    wall_s: float,
    build_summed_s: float,
    build_wall_s: float,
    prepared: Prepared | None = None,
) -> dict[str, Any]:
    summed = dict.fromkeys(STAGES, 0.0)
    for result in results:
        for stage, seconds in _stages(result).items():
            summed[stage] += seconds
    summed["build"] = build_summed_s  # the pool's work, not the lanes' waiting for it
    run_steps: dict[str, float] = {}
    # the references the jobs ran, and those run before them, phase by phase (load, wait, run, compile), and the
    # steps of those the jobs ran (kbench.isolation.REFERENCE_STEPS)
    reference_phases: dict[str, float] = dict(prepared.phase_s) if prepared else {}
    reference_steps: dict[str, float] = {}
    for result in results:
        for step, seconds in result.run_steps_s.items():
            run_steps[step] = run_steps.get(step, 0.0) + seconds
        for key, seconds in result.stage_s.items():
            if key.startswith("reference_step_"):
                step = key.removeprefix("reference_step_")
                reference_steps[step] = reference_steps.get(step, 0.0) + seconds
            elif key.startswith("reference_"):
                phase = key.removeprefix("reference_")
                reference_phases[phase] = reference_phases.get(phase, 0.0) + seconds
    lanes: dict[str, list[JobResult]] = {}
    for result in results:
        lanes.setdefault(result.gpu or result.device, []).append(result)
    busiest = max((_lane_stages(lane) for lane in lanes.values()), key=lambda s: sum(s.values()), default=None)
    critical = busiest or dict.fromkeys(STAGES, 0.0)
    if prepared is not None:  # before any job: every lane waited for them
        summed["reference"] += prepared.wall_s
        critical["reference"] += prepared.wall_s
    return {
        "jobs": len(results),
        "wall_s": round(wall_s, 3),
        "jobs_per_hour": round(len(results) * 3600 / wall_s, 1) if wall_s > 0 else None,
        "lanes": len(lanes),
        "build_pool_wall_s": round(build_wall_s, 3),
        "summed_s": {k: round(v, 3) for k, v in summed.items()},
        "run_steps_summed_s": {k: round(v, 3) for k, v in run_steps.items()},
        "reference_phases_summed_s": {k: round(v, 3) for k, v in reference_phases.items()},
        "reference_steps_summed_s": {k: round(v, 3) for k, v in reference_steps.items()},
        "critical_s": {k: round(v, 3) for k, v in critical.items()},
        "references_prepared": {"count": prepared.count, "wall_s": round(prepared.wall_s, 3)} if prepared else None,
        "dominant": max(critical, key=lambda k: critical[k]) if any(critical.values()) else None,
    }


def line(throughput: dict[str, Any]) -> str:
    """One line for the end of a run."""
    rate = throughput["jobs_per_hour"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in throughput["critical_s"].items())
    parts = {
        "reference phases": throughput.get("reference_phases_summed_s") or {},
        "reference steps": throughput.get("reference_steps_summed_s") or {},
        "run steps": throughput.get("run_steps_summed_s") or {},
        "build steps": (throughput.get("builds") or {}).get("steps_s") or {},
    }
    summed = "".join(
        f"; {name} summed: {', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}"
        for name, seconds in parts.items()
        if seconds
    )
    return (
        f"throughput: {throughput['jobs']} jobs in {throughput['wall_s']:.0f} s"
        f" = {rate if rate is not None else '?'} jobs/h; on the critical path: {stages};"
        f" most time: {throughput['dominant'] or 'none'}{summed}"
    )
