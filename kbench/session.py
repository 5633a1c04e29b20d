"""A verify or bench session: choose the jobs, run them, and record each result as it is judged."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbench import build_pool, catalog, metadata, throughput
from kbench.caches import default_cache_root
from kbench.calibrate import Ceilings, measure
from kbench.catalog import Problem
from kbench.config import KbenchConfig, check_timing_mode
from kbench.reference import ReferenceRun
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

    def finish(
        self, device_info: dict[str, Any], references: list[ReferenceCheck], rates: dict[str, Any] | None = None
    ) -> None:
        self.metadata["device_info"] = device_info
        if rates is not None:
            self.metadata["throughput"] = rates  # this session's; a resumed run's earlier ones are not in it
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
    """The jobs of a recorded run that have no result yet, with the run's own device and configuration."""
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
    finished = {(r.problem, r.solution) for r in run_dir.results.read()}
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
    gpus = metadata.gpu_state() if device.startswith("cuda") else []
    return str(gpus[0]["name"]) if gpus else metadata.cpu_model()


def calibrate(device: str, config: KbenchConfig) -> Ceilings:
    """Measure this device's ceilings and keep them for later runs' roofline fractions."""
    check_timing_mode(config, device)
    ceilings = measure(device, device_name(device), TimingPlan.from_dict(config.timing.model_dump()))
    JsonStore(default_cache_root() / CALIBRATION_FILE).put(ceilings.device_name, ceilings)
    return ceilings


def _runner(config: KbenchConfig, device: str) -> Runner:
    """A runner with this machine's facts: peak bandwidth, device name, and the baseline cache."""
    name = device_name(device)
    ceilings = JsonStore(default_cache_root() / CALIBRATION_FILE).get(name, Ceilings)
    return Runner(
        config,
        device,
        bandwidth_bytes_per_s=_bandwidth(config, device),
        baseline_cache=JsonStore(default_cache_root() / "baselines.json"),
        device_name=name,
        ceilings=ceilings,
    )


def _bandwidth(config: KbenchConfig, device: str) -> float | None:
    if config.integrity.peak_bandwidth_gbs is not None:
        return config.integrity.peak_bandwidth_gbs * 1e9
    return metadata.peak_memory_bandwidth() if device.startswith("cuda") else None


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
    on_start: Callable[[Job], None] = lambda job: None,
    on_result: Callable[[JobResult], None] = lambda result: None,
    on_prepare: Callable[[], None] = lambda: None,
    build_jobs: int | None = None,
    on_build: Callable[[int, int], None] = lambda started, total: None,
) -> SessionOutcome:
    """Build every solution first (``build_pool``, ``build_jobs`` at a time), then run the jobs whose build did
    not already settle their verdict; ``on_build(started, total)`` as each build starts."""
    began = time.monotonic()
    results: list[JobResult] = []
    references: list[ReferenceCheck] = []
    unusable = {job.solution.path: why for job in session.jobs if (why := _no_model_new(job.solution.path))}
    paths = [job.solution.path for job in session.jobs if job.solution.path not in unusable]
    builds = build_pool.build_all(paths, device, config.timeouts, build_jobs, on_build)

    def finished(result: JobResult) -> None:
        if recorder is not None:
            recorder.record(result)
        results.append(result)
        on_result(result)

    with _runner(config, device) as runner:
        jobs = []
        for job in session.jobs:
            if job.solution.path in unusable:  # read from its text: no worker, no build
                finished(runner.build_failed(job, "load_error", unusable[job.solution.path], "", 0.0, "its text"))
                continue
            outcome = builds.of(job.solution.path)
            failure = outcome.failure(device) if outcome is not None else None
            if outcome is not None and failure is not None:
                finished(runner.build_failed(job, *failure, outcome.worker_s))
            else:
                jobs.append(job)
        on_prepare()
        if jobs:
            runner.start_first(jobs[0])
        runner.references.prepare([(job.problem, job.overrides) for job in jobs] + session.reference_only)
        for index, job in enumerate(jobs):
            on_start(job)
            finished(runner.run(job, next_job=jobs[index + 1] if index + 1 < len(jobs) else None))
        for problem, sizes in session.reference_only:
            reference = runner.references.get(problem, sizes)
            references.append(ReferenceCheck.of(problem, reference))
        rates = throughput.summary(results, time.monotonic() - began, builds.summed_s(), builds.wall_s)
        rates["builds"] = {**builds.counts(), "workers": builds.workers}
        outcome = SessionOutcome(results, references, runner.references.device_info, rates)
    if recorder is not None:
        recorder.finish(outcome.device_info, references, rates)
    return outcome
