"""What a bench or verify run prints while it runs: the plan, then a line (or a progress bar) per step, on this
host's devices or on a Ray cluster. The CLI parses; this drives ``session`` and says how far it got."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from kbench import display, session
from kbench.config import confines_workers
from kbench.device_kind import on_gpu
from kbench.scheduler import Progress

if TYPE_CHECKING:
    from kbench.config import KbenchConfig
    from kbench.devices import Device
    from kbench.results import JobResult


def describe_plan(planned: session.SessionPlan, device: str) -> list[str]:
    """What is about to run and at what sizes, said before it starts: a full-size problem on the CPU can take
    minutes, and the user should know that before the first one."""
    lines = [f"{len(planned.jobs)} job(s) on {device}:"]
    for job in planned.jobs:
        problem = job.problem
        sizes = ", ".join(f"{k}={v}" for k, v in job.overrides.items()) or "the file's own sizes"
        full = not on_gpu(device) and not problem.small_sizes and not job.overrides
        note = " (full size: no KBENCH_SMALL_SIZES; this may take minutes)" if full else ""
        lines.append(f"  {problem.name} / {job.solution.name} at {sizes}{note}")
    for problem, sizes in planned.reference_only:
        shown = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "the file's own sizes"
        lines.append(f"  {problem.name}: reference only (no solution for {device}) at {shown}")
    return lines


def confinement(config: KbenchConfig) -> str:
    """Whether the untrusted workers are confined: what a solution could reach is worth a line before it runs."""
    setting = config.integrity.sandbox
    if confines_workers(config):
        return f"workers confined with Landlock (integrity.sandbox: {setting}): they write only to their own folders"
    return f"workers not confined (integrity.sandbox: {setting}): a solution can write wherever this user can"


def run_here(
    planned: session.SessionPlan,
    device: str,
    config: KbenchConfig,
    recorder: session.Recorder | None,
    progress_console: Console,
    lanes: list[Device],
    build_jobs: int | None = None,
) -> session.SessionOutcome:
    """The run on this host's devices, a line or a progress bar per step on ``progress_console``."""
    for line in describe_plan(planned, device):
        progress_console.print(line, markup=False, highlight=False, soft_wrap=True)
    if len(lanes) > 1 or lanes[0].index is not None:
        progress_console.print(f"on {', '.join(lane.described or lane.label for lane in lanes)}", highlight=False)
    progress_console.print(confinement(config), markup=False, highlight=False)
    finished, starts, started = 0, 0, time.monotonic()
    total = len(planned.jobs)
    standing = Progress(total)
    with display.job_progress(progress_console, total) as (progress, task):

        def say(text: str) -> None:
            # No progress bar where output is a file or a CI log: a line per step instead, so a slow job
            # still shows where it is.
            if not progress_console.is_terminal:
                progress_console.print(text, markup=False, highlight=False, soft_wrap=True)

        def on_start(job: Any, lane: Device) -> None:
            nonlocal starts
            starts += 1
            where = f" on {lane.label}" if len(lanes) > 1 else ""
            progress.update(task, description=f"{job.problem.name} / {job.solution.name}{where} · {standing.line()}")
            say(
                f"[{starts}/{total}] {job.problem.name} / {job.solution.name}: started{where} "
                f"({time.monotonic() - started:.0f} s into the run; {standing.line()})"
            )

        def on_result(result: JobResult) -> None:
            nonlocal finished
            finished += 1
            progress.advance(task)
            progress.update(task, description=standing.line())
            say(f"{display.job_line(result, finished, total)} · {standing.line()}")

        def on_prepare() -> None:
            progress.update(task, description="references with cached timings, side by side")
            say("preparing the references (building and timing them first)")

        def on_build(building: int, builds: int) -> None:
            progress.update(task, description=f"building solutions on the CPU: {building}/{builds} started")
            say(f"building {building}/{builds} ({time.monotonic() - started:.0f} s into the run)")

        return session.execute(
            planned,
            config,
            device,
            recorder,
            on_start,
            on_result,
            on_prepare,
            build_jobs=build_jobs,
            on_build=on_build,
            devices=lanes,
            progress=standing,
        )


def run_on_ray(
    planned: session.SessionPlan,
    device: str,
    config: KbenchConfig,
    recorder: session.Recorder,
    out: Console,
    address: str,
    run_id: str,
) -> session.SessionOutcome:
    """The run on a Ray cluster (``kbench.ray_cluster``): one line per job as it starts and ends, and the jobs
    whose node was lost, which ``--resume`` runs again. Raises ``ray_cluster.RayClusterError``."""
    from kbench import ray_cluster

    for line in describe_plan(planned, device):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    done, total = 0, len(planned.jobs)

    def on_result(result: JobResult) -> None:
        nonlocal done
        done += 1
        out.print(display.job_line(result, done, total), markup=False, highlight=False, soft_wrap=True)

    def on_lost(lost: ray_cluster.LostJob) -> None:
        out.print(f"[yellow]lost:[/] {escape(lost.problem)} / {escape(lost.solution)}: {escape(lost.reason)}")

    outcome = ray_cluster.execute_on_ray(
        planned,
        config,
        device,
        address,
        recorder,
        on_start=lambda job: out.print(f"{job.problem.name} / {job.solution.name}: sent to Ray", markup=False),
        on_result=on_result,
        on_lost=on_lost,
    )
    for warning in outcome.warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}")
    if outcome.lost:
        out.print(
            f"{len(outcome.lost)} job(s) lost with their node: `kbench bench --resume {run_id} --ray {address}` "
            "runs them",
            highlight=False,
        )
    return outcome
