"""The trusted reference workers of one run: each problem's reference run once and held in the parent's memory,
its timings taken from the baseline cache when there, and stored there when measured.

A cache entry is used only when it says it was measured well (``baselines.refusal``) and a short check timed by
the worker that runs anyway for the outputs does not find it far too slow (``baselines.check_refusal``); an entry
refused either way is a miss: the reference runs again, alone, timing itself, and its entry is replaced.

Trusted side. A reference worker imports the problem file and nothing a solution wrote (``reference_worker``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbench import audit, baselines
from kbench.baselines import Baseline, baseline_key
from kbench.catalog import Problem
from kbench.config import KbenchConfig
from kbench.devices import Device
from kbench.isolation import REFERENCE_STEPS, StartedWorker, WorkerCommand, WorkerRun, run_workers, start_worker
from kbench.reference import ReferenceRun, load_reference
from kbench.solution_starts import GATE_WAIT_S, worker_env
from kbench.spec import WorkerSpec
from kbench.store import JsonStore

# (problem, overrides, out_dir) -> the reference worker's spec
SpecFactory = Callable[[Problem, dict[str, Any], Path], WorkerSpec]


@dataclass(frozen=True)
class _ReferenceJob:
    """A reference worker ready to start, and what its result is read with."""

    spec: WorkerSpec
    out_dir: Path
    baseline_key: str | None  # where a timing it measures is cached; None: it is kept out of the cache
    cached: Baseline | None  # the baseline cache's timings; None: the worker times the reference itself
    command: WorkerCommand


@dataclass(frozen=True)
class Prepared:
    """What ``References.prepare`` did: how many references it ran side by side, how long that took by the
    parent's clock, and their workers' phases summed (load, run). A run's throughput counts this time: the jobs
    that find their references ready do not."""

    count: int = 0
    wall_s: float = 0.0
    phase_s: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class _EarlyReference:
    """A reference worker started early, waiting at its gate (``References.start_early``)."""

    key: str  # _reference_key of its problem and overrides
    job: _ReferenceJob
    worker: StartedWorker


def _reference_key(problem: Problem, overrides: dict[str, Any]) -> str:
    return json.dumps([str(problem.path), overrides], sort_keys=True, default=str)


class References:
    """Runs, reuses and caches the references of one run, on one device with one configuration."""

    def __init__(
        self,
        config: KbenchConfig,
        device: str,
        scratch: Path,
        cache_root: Path | None,
        spec: SpecFactory,
        baseline_cache: JsonStore | None,
        device_name: str,
        placement: Device | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self._scratch = scratch
        self._cache_root = cache_root
        self._spec = spec
        self.baseline_cache = baseline_cache if config.baselines.cache else None
        self.device_name = device_name
        self._placement = placement  # the GPU its workers see
        self._done: dict[str, ReferenceRun] = {}
        self._refused: dict[str, str] = {}  # baseline key -> why its cache entry is not used in this run
        self._early: _EarlyReference | None = None  # a worker started for the reference that runs next
        self.device_info: dict[str, Any] = {}  # from the last reference that ran

    def get(
        self, problem: Problem, overrides: dict[str, Any], then: tuple[Problem, dict[str, Any]] | None = None
    ) -> ReferenceRun:
        """The reference, run now unless this run has it. ``then``: the reference expected next, whose worker
        starts early (``start_early``) while this one runs."""
        key = _reference_key(problem, overrides)
        found: ReferenceRun | None = self._done.get(key)
        # Twice at most: once its check has refused a cached entry, _cached_baseline finds none, and the
        # reference times itself.
        while found is None:
            cached = self._cached_baseline(problem, overrides)
            early = self._take_early(key, cached)
            job = early.job if early is not None else self._job(problem, overrides, cached)
            worker = early.worker if early is not None else start_worker(job.command)
            worker.open_gate()  # a no-op for a worker started now, without one
            if then is not None and _reference_key(*then) != key:
                self.start_early(*then)
            found = self._finish(job, run_workers([], started=[worker], watch=self.waiting())[0])
        self._done[key] = found
        return found

    def start_early(self, problem: Problem, overrides: dict[str, Any]) -> None:
        """Start the worker of a reference that will run next, held at its gate after its CPU-only start (imports,
        the problem file, the seeded weights), while the GPU is still another's; ``get`` lets it through. One at
        a time: starting another drops it. A failure here only loses the head start."""
        key = _reference_key(problem, overrides)
        if key in self._done or (self._early is not None and self._early.key == key):
            return
        self._drop_early()
        with contextlib.suppress(Exception):
            job = self._job(problem, overrides, self._cached_baseline(problem, overrides), gated=True)
            self._early = _EarlyReference(key, job, start_worker(job.command))

    def waiting(self) -> list[StartedWorker]:
        """The reference worker started early, if any: its channel is read while a job runs, for its phase clock."""
        return [self._early.worker] if self._early is not None else []

    def close(self) -> None:
        self._drop_early()

    def _take_early(self, key: str, cached: Baseline | None) -> _EarlyReference | None:
        """The worker started early for this reference, if it was started for what it must do now (time itself, or
        check these cached timings); one started for it to do anything else is dropped, one for another reference
        is left waiting."""
        early = self._early
        if early is None or early.key != key:
            return None
        self._early = None
        if early.job.cached == cached:
            return early
        early.worker.close()
        return None

    def _drop_early(self) -> None:
        if self._early is not None:
            self._early.worker.close()
            self._early = None

    def ready(self, problem: Problem, overrides: dict[str, Any]) -> ReferenceRun | None:
        """The reference if it already ran without error; None otherwise (nothing is started)."""
        reference = self._done.get(_reference_key(problem, overrides))
        return reference if reference is not None and reference.error is None else None

    def prepare(self, wanted: list[tuple[Problem, dict[str, Any]]]) -> Prepared:
        """Run side by side, ``baselines.parallel`` at a time, the references whose timings are in the baseline
        cache (they time only a short check of them, which running beside others can slow but never speed up), so
        that jobs find them done. One that fails here is left for its job to run alone: running beside the others
        (short of memory, say) must not be what fails it; so is one whose check refused its cached time. A
        reference that times runs alone, when its job asks for it."""
        # This is only a head start: where anything here fails (a full disk, say), the job runs its reference
        # alone and reports what went wrong there.
        began = time.monotonic()
        pending: dict[str, _ReferenceJob] = {}
        try:
            for problem, overrides in wanted:
                key = _reference_key(problem, overrides)
                cached = self._cached_baseline(problem, overrides)
                if cached is not None and key not in self._done and key not in pending:
                    pending[key] = self._job(problem, overrides, cached)
            workers = run_workers([job.command for job in pending.values()], at_once=self.config.baselines.parallel)
        except Exception:
            return Prepared(wall_s=time.monotonic() - began)
        phase_s: dict[str, float] = {}
        for (key, job), worker in zip(pending.items(), workers, strict=True):
            for phase, seconds in worker.phase_s.items():
                phase_s[phase] = phase_s.get(phase, 0.0) + seconds
            with contextlib.suppress(Exception):
                reference = self._finish(job, worker)  # None: the check refused the cached time, see get
                if reference is not None and reference.error is None:
                    self._done[key] = reference
        return Prepared(len(pending), time.monotonic() - began, phase_s)

    def timed_again(self, problem: Problem, overrides: dict[str, Any]) -> ReferenceRun:
        """The reference alone, timed now in a fresh trusted worker (eager only, no float64 audit, no perturbed
        trials), and kept out of the baseline cache: a yardstick for this moment, not a baseline. Only the
        returned run's timings are new; its outputs are the ones this run already holds."""
        reference = self.get(problem, overrides)
        job = self._job(problem, overrides, None, keep=False)
        timed = self._finish(job, run_workers([job.command])[0])  # it times: there is no cached time to refuse
        if timed is None or timed.error is not None:
            return timed or ReferenceRun(error="the reference was not timed")
        return dataclasses.replace(
            reference,
            timing_ms=timed.timing_ms,
            timing_mode=timed.timing_mode,
            timing_notes=timed.timing_notes,
            baseline_cached=False,
        )

    def cached_output_numel(self, problem: Problem, overrides: dict[str, Any]) -> int | None:
        """The reference's output size from the baseline cache, before the reference has run in this run."""
        cached = self._cached_baseline(problem, overrides)
        return cached.output_numel if cached is not None else None

    def compile_mode(self) -> str | None:
        baselines = self.config.baselines
        return baselines.compile_mode if baselines.compile_on(self.device) else None

    def baseline_key(self, problem: Problem, overrides: dict[str, Any]) -> str:
        """Where this problem's reference timings are cached: timing settings and mode included."""
        return baseline_key(problem, overrides, self.device_name, self.config.timing.model_dump(), self.compile_mode())

    def _cached_baseline(self, problem: Problem, overrides: dict[str, Any]) -> Baseline | None:
        """The cache entry, unless this run has refused it or it says it was measured badly (then it is a miss,
        and why is kept for the job's notes)."""
        if self.baseline_cache is None:
            return None
        key = self.baseline_key(problem, overrides)
        entry = None if key in self._refused else self.baseline_cache.get(key, Baseline)
        why = baselines.refusal(entry, self.config.timing) if entry is not None else None
        if why is not None:
            self._refused[key] = why
        return entry if why is None else None

    def _job(
        self,
        problem: Problem,
        overrides: dict[str, Any],
        cached: Baseline | None,
        keep: bool = True,
        gated: bool = False,
    ) -> _ReferenceJob:
        """``keep=False``: only the eager timing is wanted (the outputs are the ones already held), uncached.
        ``gated``: the worker waits at a gate after its CPU-only start (``start_early``)."""
        out_dir = Path(tempfile.mkdtemp(prefix="ref-", dir=self._scratch))
        spec_path = out_dir / "spec.json"
        spec = self._spec(problem, overrides, out_dir)
        spec.time_reference = cached is None
        spec.compile_mode = self.compile_mode() if cached is None and keep else None
        if not keep:
            spec.audit_float64, spec.perturbation_trials = False, 0
        spec.write(spec_path)
        timeout = self.config.timeouts.reference_s
        command = WorkerCommand(
            "kbench.reference_worker",
            [str(spec_path)],
            out_dir / "worker.log",
            {"load": timeout, **({"wait": GATE_WAIT_S} if gated else {}), "run": timeout, "compile": timeout},
            env=worker_env(self._cache_root, placement=self._placement),
            gated=gated,
            steps=REFERENCE_STEPS,
        )
        key = self.baseline_key(problem, overrides) if keep else None
        return _ReferenceJob(spec, out_dir, key, cached, command)

    def _finish(self, job: _ReferenceJob, worker: WorkerRun) -> ReferenceRun | None:
        """The reference a worker left. None only for a job with cached timings whose check refused them (why is
        kept in ``_refused``): its outputs are dropped, and the reference must run again, timing itself."""
        result, error = worker.last("result"), worker.last("error")
        compiling = result is not None and "compile" in worker.phase_s  # the reference itself was done
        if worker.timed_out_phase and not compiling:
            return ReferenceRun(error=f"reference timed out after {worker.timeout_s:g} s", detail=worker.log_tail)
        if not compiling and (error is not None or result is None or worker.returncode != 0):
            info = error["error"] if error else {}
            reason = info.get("reason") or f"reference worker {worker.exit_description()} without a result"
            return ReferenceRun(error=reason, detail=f"{info.get('detail', '')}\n{worker.log_tail}")
        found = dict(result["result"])  # type: ignore[index]
        if compiling:
            compiled = _compile_baseline(worker)
            found.update(compiled, timing_notes=found.get("timing_notes", []) + compiled.get("timing_notes", []))
        reference = load_reference(job.out_dir, job.spec, found, worker.outputs)
        reference.phase_s, reference.step_s = dict(worker.phase_s), dict(worker.step_s)
        shutil.rmtree(job.out_dir, ignore_errors=True)  # now held in memory, where no worker can reach it
        if reference.error is None:
            self.device_info = reference.device_info
            reference.warnings = audit.degenerate_warnings(reference.trials, self.config.tolerance_for)
            if job.cached is not None:
                return self._checked(job, job.cached, reference, found)
            self._store(job, reference, found)
        return reference

    def _checked(
        self, job: _ReferenceJob, cached: Baseline, reference: ReferenceRun, found: dict[str, Any]
    ) -> ReferenceRun | None:
        """``reference`` with the cached timings, unless the worker's short check of the time alone finds it an
        outlier: then None, and the entry is refused for the rest of this run."""
        check_ms = [float(sample) for sample in found.get("check_ms", [])]
        why = baselines.check_refusal(cached, check_ms, found.get("check_mode"))
        if why is not None:
            self._refused[str(job.baseline_key)] = why  # a job with cached timings always has its key
            return None
        reference.timing_ms, reference.compile_timing_ms = cached.eager_ms, cached.compile_ms
        reference.compile_error, reference.baseline_cached = cached.compile_error, True
        reference.timing_mode, reference.compile_timing_mode = cached.timing_mode, cached.compile_timing_mode
        reference.timing_notes, reference.baseline_check_ms = cached.timing_notes, check_ms
        return reference

    def _store(self, job: _ReferenceJob, reference: ReferenceRun, found: dict[str, Any]) -> None:
        """Cache the timings this worker measured, with how it measured them, in place of any entry refused in this
        run: the job's notes then say why that one was not used."""
        if self.baseline_cache is None or job.baseline_key is None:
            return
        conditions = found.get("timing_conditions")
        self.baseline_cache.put(
            job.baseline_key,
            Baseline(
                reference.timing_ms,
                reference.compile_timing_ms,
                reference.compile_error,
                reference.timing_mode,
                reference.compile_timing_mode,
                reference.timing_notes,
                reference.output_numel,
                baselines.measured(reference.timing_ms, conditions if isinstance(conditions, dict) else {}),
            ),
        )
        why = self._refused.pop(job.baseline_key, None)
        if why is not None:
            reference.baseline_notes.append(
                f"the baseline cache's time alone was not used ({why}): the reference was timed again alone, "
                "and its entry replaced"
            )


def _compile_baseline(worker: WorkerRun) -> dict[str, Any]:
    """The torch.compile baseline a reference worker sent after its result, or why there is none: a compile
    that hung or took the process down loses that baseline, never the reference."""
    compiled = worker.last("compiled")
    if compiled is not None and isinstance(compiled["compiled"], dict):
        return compiled["compiled"]
    if worker.timed_out_phase == "compile":
        return {"compile_error": f"torch.compile timed out after {worker.timeout_s:g} s (timeouts.reference_s)"}
    error = worker.last("error")
    reason = error["error"].get("reason") if error else None
    return {"compile_error": reason or f"the reference worker {worker.exit_description()} in torch.compile"}
