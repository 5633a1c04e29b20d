"""A verify or bench session: choose the jobs, run them, and record each result as it is judged."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kbench import build_pool, catalog, metadata, scheduler, throughput
from kbench.caches import default_cache_root
from kbench.calibrate import Ceilings, measure
from kbench.catalog import Problem
from kbench.config import KbenchConfig, check_timing_mode, confines_workers
from kbench.device_kind import on_gpu
from kbench.devices import Device
from kbench.job_results import judged_without_worker
from kbench.reference import ReferenceRun
from kbench.references import Prepared
from kbench.results import JobResult
from kbench.runner import Job, Runner, effective_overrides
from kbench.runs import RunDir
from kbench.stats import median_ms
from kbench.store import JsonStore
from kbench.timing import TimingPlan


class RecordError(Exception):
    """A result could not be written (a full disk, say); every result written before it is kept."""


@dataclass
class ReferenceCheck:
    """A problem with no solution for this device: its reference still runs, so a broken one shows."""

    problem: str
    ref_ms: float | None
    error: str | None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, problem: Problem, reference: ReferenceRun) -> ReferenceCheck:
        return cls(problem.name, median_ms(reference.timing_ms), reference.error, reference.warnings)


@dataclass
class SessionPlan:
    jobs: list[Job] = field(default_factory=list)
    reference_only: list[tuple[Problem, dict[str, Any]]] = field(default_factory=list)  # with overrides


def plan(
    problems: list[Problem],
    device: str,
    overrides: dict[str, Any],
    registry: catalog.Catalog,
    solution_paths: list[Path] | None = None,
) -> SessionPlan:
    """Explicit solution files run as given; otherwise each problem's registered solutions for the device."""
    result = SessionPlan()
    for problem in problems:
        catalog.check_overrides(problem, overrides)
        if solution_paths:
            solutions = [catalog.read_solution(path) for path in solution_paths]
        else:
            solutions = [s for s in registry.registered_solutions(problem) if device in s.devices]
        sizes = effective_overrides(problem, device, overrides)
        if not solutions:
            result.reference_only.append((problem, sizes))
        result.jobs.extend(Job(problem, solution, sizes) for solution in solutions)
    return result


@dataclass(frozen=True)
class Selection:
    """What a bench run was asked to run: enough to plan it again for ``--resume``."""

    problems: list[str]  # resolved problem file paths
    overrides: dict[str, Any]
    problems_dir: str
    solutions_dir: str

    def registry(self) -> catalog.Catalog:
        return catalog.Catalog(Path(self.problems_dir), Path(self.solutions_dir))


class Recorder:
    """Writes a run directory: metadata first, then one results line per finished job."""

    def __init__(
        self, run_dir: RunDir, device: str, config: KbenchConfig, command: list[str], selection: Selection
    ) -> None:
        self.run_dir = run_dir
        self.metadata = metadata.collect(device, config.model_dump(), command)
        self.metadata["selection"] = vars(selection)
        # Whether the untrusted workers were confined (kbench.sandbox), as this host decided it.
        self.metadata["sandbox"] = {"setting": config.integrity.sandbox, "confined": confines_workers(config)}
        self._write_metadata()

    @classmethod
    def reopen(cls, run_dir: RunDir, command: list[str]) -> Recorder:
        """Continue a run directory: its metadata is kept, with this resumption noted."""
        recorder = cls.__new__(cls)
        recorder.run_dir = run_dir
        recorder.metadata = run_dir.read_metadata()
        recorder.metadata.setdefault("resumed", []).append(
            {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "command": command}
        )
        recorder._write_metadata()
        return recorder

    def _write_metadata(self) -> None:
        try:
            self.run_dir.write_metadata(self.metadata)
        except OSError as exc:
            raise RecordError(f"cannot write {self.run_dir.path}/metadata.json: {exc.strerror}") from None

    def record(self, result: JobResult) -> None:
        try:
            self.run_dir.results.append(result)
        except OSError as exc:
            raise RecordError(
                f"cannot write to {self.run_dir.results.path}: {exc.strerror}. "
                "Every result finished before this one is in that file; fix the cause, then "
                f"`kbench bench --resume {self.run_dir.run_id}` runs the rest."
            ) from None

    def interrupted(self, rates: dict[str, Any]) -> None:
        """A run stopped before its end: the throughput of what it finished, marked so. Writing it must not hide
        the interrupt, so a failure to write is left for the next write to report."""
        self._keep_throughput({**rates, "interrupted": True})
        with contextlib.suppress(RecordError):
            self._write_metadata()

    def _keep_throughput(self, rates: dict[str, Any]) -> None:
        """This session's throughput as ``throughput``; a resumed run's earlier sessions' move to
        ``earlier_throughput``, oldest first, so that a run finished in pieces keeps every piece's figures."""
        if "throughput" in self.metadata:
            self.metadata.setdefault("earlier_throughput", []).append(self.metadata["throughput"])
        self.metadata["throughput"] = rates

    def finish(
        self, device_info: dict[str, Any], references: list[ReferenceCheck], rates: dict[str, Any] | None = None
    ) -> None:
        self.metadata["device_info"] = device_info
        if rates is not None:
            self._keep_throughput(rates)
        self.metadata["reference_only"] = [vars(check) for check in references]
        self.metadata["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self._write_metadata()


@dataclass
class SessionOutcome:
    results: list[JobResult]
    references: list[ReferenceCheck]
    device_info: dict[str, Any]
    throughput: dict[str, Any] = field(default_factory=dict)  # see kbench.throughput


@dataclass
class Resumption:
    plan: SessionPlan
    config: KbenchConfig
    device: str
    done: int  # jobs already finished in the run


def plan_resume(run_dir: RunDir) -> Resumption:
    """The jobs of a recorded run that have no result yet, or whose result says kbench itself failed them
    (``harness_error``: the solution was never judged), with the run's own device and configuration."""
    meta = run_dir.read_metadata()
    try:
        selection = Selection(**meta["selection"])
        config = KbenchConfig.model_validate(meta["config"])
        device = str(meta["device"])
    except (KeyError, TypeError, ValueError) as exc:
        raise catalog.CatalogError(f"{run_dir.path}: metadata.json cannot be resumed from ({exc})") from None
    registry = selection.registry()
    problems = [catalog.read_problem(Path(path)) for path in selection.problems]
    full = plan(problems, device, selection.overrides, registry)
    finished = {(r.problem, r.solution) for r in run_dir.results.read() if "harness_error" not in r.flags}
    remaining = [job for job in full.jobs if (job.problem.name, job.solution.name) not in finished]
    return Resumption(SessionPlan(remaining, full.reference_only), config, device, len(full.jobs) - len(remaining))


def lint(problems: list[Problem], device: str, config: KbenchConfig, overrides: dict[str, Any]) -> list[ReferenceCheck]:
    """Run each problem's reference alone and report degenerate outputs (see ``audit.degenerate_warnings``)."""
    for problem in problems:
        catalog.check_overrides(problem, overrides)
    wanted = [(problem, effective_overrides(problem, device, overrides)) for problem in problems]
    with _runner(config, device) as runner:
        runner.references.prepare(wanted)
        checks = [ReferenceCheck.of(problem, runner.references.get(problem, sizes)) for problem, sizes in wanted]
    return checks


CALIBRATION_FILE = "calibration.json"


def device_name(device: str) -> str:
    """The name caches key on: the GPU's, or the CPU model."""
    gpus = metadata.gpu_state() if on_gpu(device) else []
    return str(gpus[0]["name"]) if gpus else metadata.cpu_model()


def calibrate(device: str, config: KbenchConfig) -> Ceilings:
    """Measure this device's ceilings and keep them for later runs' roofline fractions."""
    check_timing_mode(config, device)
    ceilings = measure(device, device_name(device), TimingPlan.from_dict(config.timing.model_dump()))
    JsonStore(default_cache_root() / CALIBRATION_FILE).put(ceilings.device_name, ceilings)
    return ceilings


def _runner(config: KbenchConfig, device: Device | str) -> Runner:
    """A runner with this machine's facts: peak bandwidth, device name, and the baseline cache."""
    lane = device if isinstance(device, Device) else Device(device)
    name = lane.name or device_name(lane.kind)
    ceilings = JsonStore(default_cache_root() / CALIBRATION_FILE).get(name, Ceilings)
    return Runner(
        config,
        lane,
        bandwidth_bytes_per_s=_bandwidth(config, lane.kind),
        baseline_cache=JsonStore(default_cache_root() / "baselines.json"),
        device_name=name,
        ceilings=ceilings,
    )


def _bandwidth(config: KbenchConfig, device: str) -> float | None:
    if config.integrity.peak_bandwidth_gbs is not None:
        return config.integrity.peak_bandwidth_gbs * 1e9
    return metadata.peak_memory_bandwidth() if on_gpu(device) else None


def _no_model_new(path: Path) -> str | None:
    """Why a solution cannot run, read from its text alone (it binds no ``ModelNew``), or None."""
    try:
        catalog.check_defines_model_new(path)
    except catalog.CatalogError as exc:
        return str(exc)
    return None


def execute(
    session: SessionPlan,
    config: KbenchConfig,
    device: str,
    recorder: Recorder | None = None,
    on_start: Callable[[Job, Device], None] = lambda job, lane: None,
    on_result: Callable[[JobResult], None] = lambda result: None,
    on_prepare: Callable[[], None] = lambda: None,
    build_jobs: int | None = None,
    on_build: Callable[[int, int], None] = lambda started, total: None,
    devices: list[Device] | None = None,
    progress: scheduler.Progress | None = None,
) -> SessionOutcome:
    """Build every solution on the build pool (``build_jobs`` at a time) while the scheduler runs, on each of
    ``devices`` (default: the one ``device`` names), the jobs whose builds are done and did not settle their
    verdict; ``on_build(started, total)`` as each build starts. ``progress``, if given, is kept up to date."""
    began = time.monotonic()
    lanes = devices or [Device(device)]
    unusable = {job.solution.path: why for job in session.jobs if (why := _no_model_new(job.solution.path))}
    paths = [job.solution.path for job in session.jobs if job.solution.path not in unusable]
    reserve = 2 * len(lanes) if on_gpu(device) else 0  # each lane's two workers keep a core each
    at_once = build_jobs or max(1, build_pool.default_jobs() - reserve)
    confined = confines_workers(config)
    builds = build_pool.start_builds(paths, device, config.timeouts, at_once, on_build, confined)
    judged_early = _Settler(unusable, builds, device, config.trials)
    results: list[JobResult] = []
    prepared: list[Prepared] = []  # the references checked side by side before the first job

    def finished(result: JobResult) -> None:
        if recorder is not None:
            recorder.record(result)
        results.append(result)
        on_result(result)

    def first_steps(runner: Runner, pending: list[list[Job]]) -> None:
        """One device: start the first job's workers early and check the cached references side by side, as
        a one-device run always did. With several, each lane runs its references as its jobs come."""
        if len(lanes) == 1 and pending:
            runner.start_first(pending[0][0])
            wanted = [(job.problem, job.overrides) for chunk in pending for job in chunk]
            prepared.append(runner.references.prepare(wanted))

    device_info: dict[str, Any] = {}  # from the last reference that ran, on any lane
    plan = scheduler.Scheduler(
        lanes,
        lambda lane: _lane_runner(config, lane, device_info),
        judged_early.result,
        on_start=on_start,
        on_result=finished,
        on_lane=first_steps,
        ready=lambda job: builds.ready(job.solution.path),
    )
    progress = progress or scheduler.Progress(len(session.jobs))
    progress.builds_done, progress.builds_total = builds.done, builds.total()
    on_prepare()
    try:
        with _judging_threads(build_pool.default_jobs() - reserve, config.pipeline.judge_beside_on(device)):
            plan.run(session.jobs, progress)
    except BaseException as stop:  # a result that cannot be written, Ctrl-C: no build goes on behind the run's back
        if isinstance(stop, KeyboardInterrupt) and recorder is not None:
            # a stopped run (Ctrl-C, a time limit) still says how fast it went until then
            recorder.interrupted(_rates(results, began, builds.report_so_far(), prepared, lanes))
        builds.cancel()
        raise
    references = _reference_checks(session.reference_only, config, lanes[0])
    outcome = SessionOutcome(results, references, device_info, _rates(results, began, builds.report(), prepared, lanes))
    if recorder is not None:
        recorder.finish(outcome.device_info, references, outcome.throughput)
    return outcome


def _rates(
    results: list[JobResult],
    began: float,
    report: build_pool.BuildReport,
    prepared: list[Prepared],
    lanes: list[Device],
) -> dict[str, Any]:
    """The run's throughput from ``began`` until now (see kbench.throughput), with its builds and devices."""
    summary = throughput.summary(
        results, time.monotonic() - began, report.summed_s(), report.wall_s, prepared[0] if prepared else None
    )
    summary["builds"] = {**report.counts(), "workers": report.workers, "steps_s": report.steps_s()}
    summary["devices"] = [lane.label for lane in lanes]
    return summary


@contextmanager
def _judging_threads(cores: int, beside: bool) -> Iterator[None]:
    """While jobs are judged beside the next job's timing, the parent's comparisons (torch's CPU threads) leave
    each lane's two workers a core each, as the builds do."""
    if not beside:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, cores)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Settler:
    """A job's result when its solution cannot run at all: no ``ModelNew`` in its text, or a build that failed."""

    unusable: dict[Path, str]
    builds: build_pool.Builds
    device: str
    trials: int

    def result(self, job: Job) -> JobResult | None:
        if job.solution.path in self.unusable:  # read from its text: no worker, no build
            why = self.unusable[job.solution.path]
            return judged_without_worker(job, self.device, self.trials, "load_error", why, "", 0.0, "its text")
        outcome = self.builds.outcome(job.solution.path)
        failure = outcome.failure(self.device) if outcome is not None else None
        if outcome is None or failure is None:
            return None
        return judged_without_worker(job, self.device, self.trials, *failure, outcome.worker_s, "the build pool")


@contextmanager
def _lane_runner(config: KbenchConfig, lane: Device, device_info: dict[str, Any]) -> Iterator[Runner]:
    with _runner(config, lane) as runner:
        try:
            yield runner
        finally:
            device_info.update(runner.references.device_info)


def _reference_checks(
    wanted: list[tuple[Problem, dict[str, Any]]], config: KbenchConfig, lane: Device
) -> list[ReferenceCheck]:
    if not wanted:
        return []
    with _lane_runner(config, lane, {}) as runner:
        return [ReferenceCheck.of(problem, runner.references.get(problem, sizes)) for problem, sizes in wanted]
