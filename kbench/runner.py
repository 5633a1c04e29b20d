"""Run jobs: the reference once per problem, then each solution in its own worker, judged by the parent.

Trusted side. Nothing here imports a solution; workers are separate processes (see ``isolation``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbench.catalog import Problem, Solution
from kbench.config import KbenchConfig, check_timing_mode, confines_workers
from kbench.device_kind import on_gpu
from kbench.devices import Device
from kbench.isolation import run_workers
from kbench.job_results import Attempt, JobContext, digest_or_empty, job_result, rerun_note
from kbench.judge import Judgement, first_look, judge_outputs, only_reference_slowed
from kbench.monitor import DeviceMonitor
from kbench.partner import Partner
from kbench.reference import ReferenceRun
from kbench.references import References
from kbench.results import JobResult, Verdict
from kbench.scan import file_flags
from kbench.solution_starts import SolutionStart, SolutionStarter
from kbench.spec import WorkerSpec
from kbench.stats import median_ms
from kbench.store import JsonStore
from kbench.timed_comparison import judging_settings
from kbench.timing import TimingPlan
from kbench.turns import driven, overhead_ms

if TYPE_CHECKING:
    from kbench.calibrate import Ceilings


@dataclass(frozen=True)
class Job:
    problem: Problem
    solution: Solution
    overrides: dict[str, Any] = field(default_factory=dict)


# Judges what a job's workers left and returns the job's result; never raises (see ``Runner.start``).
Finish = Callable[[], JobResult]


def effective_overrides(problem: Problem, device: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """On the CPU a problem runs at its declared small sizes; ``--set`` wins over both."""
    base = dict(problem.small_sizes) if not on_gpu(device) else {}
    return {**base, **overrides}


class Runner:
    """Runs jobs on one device with one configuration; reference results are reused across solutions."""

    def __init__(
        self,
        config: KbenchConfig,
        device: Device | str,
        cache_root: Path | None = None,
        bandwidth_bytes_per_s: float | None = None,
        baseline_cache: JsonStore | None = None,
        ceilings: Ceilings | None = None,
        device_name: str = "",
    ) -> None:
        self.placement = device if isinstance(device, Device) else Device(device)
        self.device = self.placement.kind  # what workers are told: inside them their one GPU is "cuda"
        check_timing_mode(config, self.device)  # a mode this device cannot time is refused before any job runs
        self.confined = confines_workers(config)
        self.config = config
        self.cache_root = cache_root
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self.ceilings = ceilings  # measured by `kbench calibrate`: the roofline's two ceilings
        self._scratch = Path(tempfile.mkdtemp(prefix="kbench-"))
        self.references = References(
            config,
            self.device,
            self._scratch,
            cache_root,
            self._reference_spec,
            baseline_cache,
            device_name or self.device,
            self.placement,
        )
        self._prefetch = config.pipeline.prefetch_on(self.device)
        self._starter = SolutionStarter(
            config, self._scratch, cache_root, self._solution_spec, self.device, self.placement
        )

    def close(self) -> None:
        self._starter.close()
        self.references.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spec(
        self, problem: Problem, overrides: dict[str, Any], out_dir: Path, solution: Path | None, poison_numel: int = 0
    ) -> WorkerSpec:
        integrity = self.config.integrity
        return WorkerSpec(
            problem_path=str(problem.path),
            device=self.device,
            seed=self.config.seed,
            trials=self.config.trials,
            timing=self.config.timing.model_dump(),
            out_dir=str(out_dir),
            overrides=overrides,
            solution_path=str(solution) if solution else None,
            extensions_root=str(self.cache_root) if self.cache_root else None,
            perturbation_trials=integrity.perturbation_trials,
            audit_float64=integrity.audit_float64,
            kernel_census=integrity.kernel_census,
            poison_numel=poison_numel,
            judging=judging_settings(self.config),
        )

    @property
    def judges_beside(self) -> bool:
        """Whether a lane should judge a job's outputs while its next job runs (``pipeline.judge_beside``)."""
        return self.config.pipeline.judge_beside_on(self.device)

    def run(self, job: Job, next_job: Job | None = None) -> JobResult:
        """Run and judge one job (``start``, then its finish)."""
        return self.start(job, next_job)()

    def start(self, job: Job, next_job: Job | None = None) -> Finish:
        """Run the job's workers to their end, and return what judges their outputs (comparing them is the costly
        part, which a lane may do while its next job runs). Neither raises: if kbench itself fails, the job's
        result says so and the run goes on. With prefetching on, ``next_job``'s solution worker starts while this
        one runs, and waits at its gate."""
        started = time.monotonic()
        try:
            return self._start(job, started, next_job)
        except Exception:
            failed = self._harness_error(job, started)
            return lambda: failed

    def _harness_error(self, job: Job, started: float) -> JobResult:
        return JobResult(
            problem=job.problem.name,
            solution=job.solution.name,
            device=self.device,
            gpu=self.placement.described,
            verdict=Verdict.RUNTIME_ERROR,
            reason="kbench failed while running or judging this job (see detail)",
            flags=["harness_error"],
            detail=traceback.format_exc()[-20_000:],
            wall_s=time.monotonic() - started,
        )

    def prepare_reference(self, job: Job, then: Job | None = None) -> dict[str, float]:
        """Run ``job``'s reference now, if this runner has not (a lane waiting for a build puts its time to use),
        and return where its worker's time went (``ReferenceRun.clock_s``; nothing when it had run). With
        prefetching on, the worker of ``then``'s reference starts meanwhile, and waits at its gate. A failure is
        kept for the job, which reports it. Never raises: the job runs its reference itself if this could not."""
        if self.references.ready(job.problem, job.overrides) is not None:
            return {}
        following = (then.problem, then.overrides) if then is not None and self._prefetch else None
        with contextlib.suppress(Exception):
            return self.references.get(job.problem, job.overrides, then=following).clock_s()
        return {}

    def _reference_spec(self, problem: Problem, overrides: dict[str, Any], out_dir: Path) -> WorkerSpec:
        return self._spec(problem, overrides, out_dir, None)

    def _solution_spec(self, job: Job, out_dir: Path, poison_numel: int) -> WorkerSpec:
        spec = self._spec(job.problem, job.overrides, out_dir, job.solution.path, poison_numel)
        spec.confined = self.confined
        return spec

    def _start_early(self, job: Job) -> None:
        """Start ``job``'s solution worker now if its reference is ready, else its reference's worker (either waits
        at its gate: running anything on the GPU now would share it with the job being timed)."""
        reference = self.references.ready(job.problem, job.overrides)
        if reference is not None:
            self._starter.start_early(job, reference.output_numel)
        else:
            self.references.start_early(job.problem, job.overrides)

    def start_first(self, job: Job) -> None:
        """Start the first job's workers before the references run, when the baseline cache knows its reference's
        output size: their CPU work (imports, the problem file, the seeded weights) then overlaps the references'.
        References whose timings are cached time only a 0.1 s check of them, which an early worker's CPU work could
        only slow, and a slower check never refuses an entry (baselines.check_refusal)."""
        numel = self.references.cached_output_numel(job.problem, job.overrides) if self._prefetch else None
        if numel is not None:
            self._starter.start_early(job, numel)

    def _attempt(self, job: Job, reference: ReferenceRun, start: SolutionStart, next_job: Job | None) -> Attempt:
        """Let the started pair through their gates, drive their timing turns, follow both to their ends, and
        read what they reported."""
        began = time.monotonic()
        plan = TimingPlan.from_dict(self.config.timing.model_dump())
        with DeviceMonitor(self.placement.is_gpu, self.placement.index or 0) as monitor:
            for worker in start.workers():  # the partner's GPU use is the job's own, not another process's
                monitor.worker_started(worker.pid)
            start.open_gates()
            if next_job is not None and self._prefetch:
                self._start_early(next_job)
            with driven(start.partner, start.worker, plan, self.config.timing.checked_calls) as turns:
                waiting = self._starter.waiting() + self.references.waiting()
                worker, partner = run_workers([], started=start.workers(), watch=waiting)
        worker_done = time.monotonic()
        flags = file_flags(job.solution.path)  # the static scan: a second opinion, never a verdict alone
        seen = first_look(worker, reference, self.config, self.bandwidth_bytes_per_s, flags, Partner(partner, turns))
        return Attempt(
            worker,
            seen,
            start.out_dir,
            monitor.state,
            began,
            time.monotonic() - worker_done,
            turns.wall_s,
            turns.rounds,
            overhead_ms(turns),
        )

    def _start(self, job: Job, started: float, next_job: Job | None) -> Finish:
        base: dict[str, Any] = {
            "problem": job.problem.name,
            "solution": job.solution.name,
            "device": self.device,
            "gpu": self.placement.described,
            "overrides": job.overrides,
            "problem_path": str(job.problem.path),
            "solution_path": str(job.solution.path),
            "solution_digest": digest_or_empty(job.solution.path),
            "trials": self.config.trials,
        }
        ran_before = self.references.ready(job.problem, job.overrides) is not None
        following = (next_job.problem, next_job.overrides) if next_job is not None and self._prefetch else None
        reference = self.references.get(job.problem, job.overrides, then=following)
        reference_done = time.monotonic()
        if reference.error is not None:
            failed = JobResult(
                **base,
                verdict=Verdict.RUNTIME_ERROR,
                reason=f"reference failed: {reference.error}",
                flags=["reference_failed"],
                detail=reference.detail,
                wall_s=time.monotonic() - started,
            )
            return lambda: failed
        poison = reference.output_numel
        attempt = self._attempt(job, reference, self._starter.start(job, poison), next_job)
        yardstick = reference  # what the reference beside the solution is held against: its time alone
        ref_ms = median_ms(reference.timing_ms)
        reruns: list[str] = []
        while only_reference_slowed(attempt.seen) and len(reruns) < self.config.timing.reference_drift_retries:
            # The yardstick may be out of date (a cached baseline, a host that has slowed since), so the
            # reference alone is timed again first, while no solution process is left to slow it.
            shutil.rmtree(attempt.out_dir, ignore_errors=True)  # judged on the next run alone
            again = self.references.timed_again(job.problem, job.overrides)
            reruns.append(rerun_note(len(reruns) + 1, attempt.seen, ref_ms, again))
            if again.error is None:
                yardstick, ref_ms = again, median_ms(again.timing_ms)
            attempt = self._attempt(job, yardstick, self._starter.start_fresh(job, poison), None)
        stages = {
            "reference": reference_done - started,  # 0 when this run already has the problem's reference
            # ... and where it went when this job ran it: its worker's start, its calls and timing, torch.compile's
            **({f"reference_{part}": s for part, s in reference.clock_s().items()} if not ran_before else {}),
            **({"earlier_runs": attempt.began - reference_done} if reruns else {}),
        }
        context = JobContext(base, reference, yardstick, ref_ms, reruns, stages, started)

        def finish() -> JobResult:
            try:
                return self._judged(attempt, context)
            except Exception:
                return self._harness_error(job, started)
            finally:
                shutil.rmtree(attempt.out_dir, ignore_errors=True)

        return finish

    def _judged(self, attempt: Attempt, context: JobContext) -> JobResult:
        """The job's result: its outputs compared (when the first look did not already decide), and every fact."""
        judging = time.monotonic()
        seen = attempt.seen
        judged = (
            seen
            if isinstance(seen, Judgement)
            else judge_outputs(seen, attempt.out_dir, context.reference, self.config)
        )
        judge_s = attempt.first_look_s + time.monotonic() - judging
        return job_result(attempt, context, judged, judge_s, self.config, self.ceilings)
