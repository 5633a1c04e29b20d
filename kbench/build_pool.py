"""The build pool: every solution of a session is built on CPU workers, N at a time, in the background; a job
waits for its own solution's build only, so GPU jobs run while later solutions build.

Trusted side. Building is importing the solution (its ``load_inline`` compiles then), which runs untrusted code:
each build is a worker of its own (``python -m kbench.untrusted.build_worker``, isolated by ``kbench.isolation``)
with no GPU visible. It builds into the folder the solution worker will look in (``build_cache.extension_dir``),
so the job's own import is a cache hit; a solution that does not compile gets its verdict here, and its job never
starts a worker on the GPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbench import build_cache
from kbench.caches import default_cache_root
from kbench.config import Timeouts
from kbench.device_kind import on_gpu
from kbench.isolation import WorkerCommand, WorkerRun, run_workers
from kbench.solution_starts import worker_env

BUILD_WORKER = "kbench.untrusted.build_worker"
# Sources that compile when imported: load_inline and load both live in torch.utils.cpp_extension. Any other
# solution has nothing to build; it is left to its job, which imports it as before.
COMPILES_ON_IMPORT = "cpp_extension"
# Builds run at a lower CPU priority than the GPU lanes beside them: a lane's references, workers and judging
# are on the run's critical path and its timed calls launch from the CPU; a build only has to end before its job.
BUILD_NICENESS = 10


def default_jobs() -> int:
    """One build per core: a build is one compiler process, and hyperthreads add little to compiling."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


@dataclass
class BuildOutcome:
    status: str  # built | cache_hit | compile_error | load_error | timeout | not_built (left to its job)
    ext_dir: str
    build_s: float = 0.0  # the import that compiled, by the worker's clock
    worker_s: float = 0.0  # the build worker's whole life (torch's import too), by the parent's clock
    began: float | None = None  # time.monotonic() as its worker started
    reason: str = ""
    detail: str = ""
    steps_s: dict[str, float] = field(default_factory=dict)  # by step: c++, cuda, link (ninja's own log)

    def failure(self, device: str) -> tuple[str, str, str] | None:
        """(verdict, reason, detail) when the build settles the job's verdict, else None. A load error settles
        it only on the CPU: with no GPU visible, an import that touches CUDA fails here and may work in the job."""
        if self.status in ("compile_error", "timeout") or (self.status == "load_error" and not on_gpu(device)):
            return self.status, self.reason, self.detail
        return None


@dataclass
class BuildReport:
    outcomes: dict[str, BuildOutcome]  # by solution path; solutions with the same source share one
    wall_s: float
    workers: int

    def of(self, solution_path: Path | str) -> BuildOutcome | None:
        return self.outcomes.get(str(solution_path))

    def counts(self) -> dict[str, int]:
        unique = {id(o): o for o in self.outcomes.values()}
        return dict(Counter(o.status for o in unique.values()))

    def summed_s(self) -> float:
        unique = {id(o): o for o in self.outcomes.values()}
        return sum(o.worker_s for o in unique.values())

    def steps_s(self) -> dict[str, float]:
        """Each build step's seconds summed over the builds: where cutting build time would pay."""
        totals: dict[str, float] = {}
        for outcome in {id(o): o for o in self.outcomes.values()}.values():
            for step, seconds in outcome.steps_s.items():
                totals[step] = round(totals.get(step, 0.0) + seconds, 3)
        return totals


class Builds:
    """Builds under way on a pool of ``workers`` threads, each following one build worker at a time, while the
    session runs the jobs whose builds are done: ``outcome(path)`` waits for that solution's build only."""

    def __init__(
        self,
        known: dict[str, BuildOutcome],
        to_build: dict[Path, list[str]],
        device: str,
        timeouts: Timeouts,
        workers: int,
        on_start: Callable[[int, int], None],
        confined: bool = False,
    ) -> None:
        self.began, self.workers = time.monotonic(), workers
        self._mode = "confined" if confined else "free"  # each build worker confines itself (kbench.sandbox)
        self._known = known
        self._paths = to_build
        self._started = 0
        self._lock = threading.Lock()
        self._on_start, self._total = on_start, len(to_build)
        self._scratch = Path(tempfile.mkdtemp(prefix="kbench-build-"))
        self._env = build_env(device, workers)
        # The load phase is torch's import, kbench's own work: held to the reference's limit, as in solution workers.
        self._limits = {"load": timeouts.reference_s, "build": timeouts.build_s}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kbench-build")
        self._futures: dict[str, Future[BuildOutcome]] = {}
        self._live: set[int] = set()  # build workers running now (they lead their own process groups)
        for index, (ext_dir, paths) in enumerate(to_build.items()):  # in the jobs' order: the first jobs' first
            future = self._pool.submit(self._build, index, ext_dir, paths[0])
            self._futures.update(dict.fromkeys(paths, future))

    def outcome(self, solution_path: Path | str) -> BuildOutcome | None:
        """The solution's build outcome, once its build has ended; None for a solution the pool never saw."""
        key = str(solution_path)
        if key in self._futures:
            return self._futures[key].result()
        return self._known.get(key)

    def ready(self, solution_path: Path | str) -> bool:
        """Whether the solution's build has ended (or it has none): its job would not wait."""
        future = self._futures.get(str(solution_path))
        return future is None or future.done()

    def done(self) -> int:
        """How many solutions' builds have ended (cache hits and sources with nothing to build included)."""
        return len(self._known) + sum(1 for future in self._futures.values() if future.done())

    def total(self) -> int:
        return len(self._known) + len(self._futures)

    def report(self) -> BuildReport:
        """Every outcome, once every build has ended; the pool's threads and scratch folder are gone then."""
        outcomes = {**self._known, **{path: future.result() for path, future in self._futures.items()}}
        self._pool.shutdown()
        shutil.rmtree(self._scratch, ignore_errors=True)
        return self._report(outcomes)

    def report_so_far(self) -> BuildReport:
        """The builds that have ended, for a run that stops early (Ctrl-C): those under way are left out."""
        ended = {
            path: future.result() for path, future in self._futures.items() if future.done() and not future.cancelled()
        }
        return self._report({**self._known, **ended})

    def _report(self, outcomes: dict[str, BuildOutcome]) -> BuildReport:
        ended = max(((o.began or 0.0) + o.worker_s for o in outcomes.values()), default=self.began)
        return BuildReport(outcomes, max(0.0, ended - self.began), self.workers)

    def _build(self, index: int, ext_dir: Path, path: str) -> BuildOutcome:
        began: list[float] = []
        pids: list[int] = []

        def note(pid: int) -> None:
            began.append(time.monotonic())
            pids.append(pid)
            with self._lock:
                self._started += 1
                started = self._started
                self._live.add(pid)
            self._on_start(started, self._total)

        ext_dir.mkdir(parents=True, exist_ok=True)
        command = WorkerCommand(
            BUILD_WORKER,
            [self._mode, path],
            self._scratch / f"build-{index}.log",
            self._limits,
            env={**self._env, "TORCH_EXTENSIONS_DIR": str(ext_dir)},
            on_start=note,
            niceness=BUILD_NICENESS,
        )
        try:
            (run,) = run_workers([command])
        finally:
            with self._lock:
                self._live.difference_update(pids)
        return _outcome(run, ext_dir, began[0] if began else None)

    def cancel(self) -> None:
        """Stop: builds not started never start, running ones are killed (the run is ending: an error, Ctrl-C).
        Without this the interpreter would wait at exit for every build still running."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for pid in self._live:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(self._scratch, ignore_errors=True)


def start_builds(
    solution_paths: list[Path],
    device: str,
    timeouts: Timeouts,
    at_once: int | None = None,
    on_start: Callable[[int, int], None] = lambda started, total: None,
    confined: bool = False,
) -> Builds:
    """Start building each distinct solution source not built yet, ``at_once`` (default: the cores) at a time,
    in the background, each build worker confined to its build folder where ``confined``. ``on_start(started,
    total)`` is called as each build worker starts."""
    root = default_cache_root()
    known: dict[str, BuildOutcome] = {}
    to_build: dict[Path, list[str]] = {}  # build folder -> the solutions with that source
    for path in dict.fromkeys(map(Path, solution_paths)):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # its job reports it, as before
        ext_dir = build_cache.extension_dir(root, source, device)
        if COMPILES_ON_IMPORT not in source:
            known[str(path)] = BuildOutcome("not_built", str(ext_dir))
        elif build_cache.has_built_extension(ext_dir):
            known[str(path)] = BuildOutcome("cache_hit", str(ext_dir))
        else:
            to_build.setdefault(ext_dir, []).append(str(path))
    return Builds(known, to_build, device, timeouts, max(1, at_once or default_jobs()), on_start, confined)


def build_all(
    solution_paths: list[Path],
    device: str,
    timeouts: Timeouts,
    at_once: int | None = None,
    on_start: Callable[[int, int], None] = lambda started, total: None,
    confined: bool = False,
) -> BuildReport:
    """``start_builds``, then wait for every build."""
    return start_builds(solution_paths, device, timeouts, at_once, on_start, confined).report()


def build_env(device: str, at_once: int) -> dict[str, str]:
    """The solution worker's environment, with no GPU visible. nvcc then needs the target architecture named:
    the user's ``TORCH_CUDA_ARCH_LIST``, else what torch would choose for the job's GPU (its capability, +PTX),
    so the job's own import finds the same compiler commands and does not rebuild."""
    env = worker_env(None, device)
    if on_gpu(device) and not env.get("TORCH_CUDA_ARCH_LIST"):
        major, minor = build_cache.target_arch(device).split(".")
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}+PTX"
    env["CUDA_VISIBLE_DEVICES"] = ""
    # Builds side by side share the cores; ninja would otherwise start a compiler per core in each of them.
    env.setdefault("MAX_JOBS", str(max(1, (os.cpu_count() or 1) // at_once)))
    return env


def build_steps(ext_dir: Path) -> dict[str, float]:
    """Seconds per build step, read from ninja's log in the extension's build folder (``start end mtime output
    hash`` per line, milliseconds): compiling C++ (``.o``), compiling CUDA (``.cuda.o``), linking (``.so``)."""
    steps: dict[str, float] = {}
    for log in ext_dir.glob("*/.ninja_log"):
        latest: dict[str, float] = {}  # an output built twice counts its last build
        for line in log.read_text(errors="replace").splitlines():
            fields = line.split("\t")
            if line.startswith("#") or len(fields) < 4 or not fields[0].isdigit() or not fields[1].isdigit():
                continue
            latest[fields[3]] = (int(fields[1]) - int(fields[0])) / 1000
        for output, seconds in latest.items():
            step = "cuda" if output.endswith(".cuda.o") else "c++" if output.endswith(".o") else "link"
            steps[step] = round(steps.get(step, 0.0) + seconds, 3)
    return steps


def _outcome(run: WorkerRun, ext_dir: Path, began: float | None) -> BuildOutcome:
    worker_s = sum(run.phase_s.values())
    facts: dict[str, Any] = {"ext_dir": str(ext_dir), "worker_s": worker_s, "began": began}
    with contextlib.suppress(OSError):
        facts["steps_s"] = build_steps(ext_dir)
    built, error = run.last("built"), run.last("error")
    if run.violations or run.garbage_lines or "build" not in run.phase_s:
        # A channel that broke the protocol, or a failure in kbench's own imports: the job builds it, as before.
        return BuildOutcome("not_built", reason="the build worker gave no clear answer", **facts)
    if run.timed_out_phase == "build":
        reason = f"no result within {run.timeout_s:g} s in the build phase (build pool); worker process group killed"
        return BuildOutcome("timeout", reason=reason, detail=run.log_tail, **facts)
    if built is not None and isinstance(built["built"], dict) and run.returncode == 0:
        return BuildOutcome("built", build_s=float(built["built"].get("build_s", 0.0)), **facts)
    info = error["error"] if error is not None and isinstance(error["error"], dict) else {}
    if info.get("verdict") in ("compile_error", "load_error"):
        # The traceback holds the compiler's output (torch puts it in the build error's message).
        verdict, reason, detail = str(info["verdict"]), str(info.get("reason", "")), str(info.get("detail", ""))
        return BuildOutcome(verdict, reason=reason, detail=detail, **facts)
    return BuildOutcome("not_built", reason=f"the build worker {run.exit_description()}", **facts)
