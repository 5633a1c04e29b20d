"""The build pool: every solution of a session is built on CPU workers, N at a time, before its jobs run.

Trusted side. Building is importing the solution (its ``load_inline`` compiles then), which runs untrusted code:
each build is a worker of its own (``python -m kbench.untrusted.build_worker``, isolated by ``kbench.isolation``)
with no GPU visible. It builds into the folder the solution worker will look in (``build_cache.extension_dir``),
so the job's own import is a cache hit; a solution that does not compile gets its verdict here, and its job never
starts a worker on the GPU.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbench import build_cache
from kbench.caches import default_cache_root
from kbench.config import Timeouts
from kbench.isolation import WorkerCommand, WorkerRun, run_workers
from kbench.solution_starts import worker_env

BUILD_WORKER = "kbench.untrusted.build_worker"
# Sources that compile when imported: load_inline and load both live in torch.utils.cpp_extension. Any other
# solution has nothing to build; it is left to its job, which imports it as before.
COMPILES_ON_IMPORT = "cpp_extension"


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

    def failure(self, device: str) -> tuple[str, str, str] | None:
        """(verdict, reason, detail) when the build settles the job's verdict, else None. A load error settles
        it only on the CPU: with no GPU visible, an import that touches CUDA fails here and may work in the job."""
        if self.status in ("compile_error", "timeout") or (self.status == "load_error" and device == "cpu"):
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


def build_all(
    solution_paths: list[Path],
    device: str,
    timeouts: Timeouts,
    at_once: int | None = None,
    on_start: Callable[[int, int], None] = lambda started, total: None,
) -> BuildReport:
    """Build each distinct solution source not built yet, ``at_once`` (default: the cores) at a time.
    ``on_start(started, total)`` is called as each build worker starts."""
    began, at_once = time.monotonic(), max(1, at_once or default_jobs())
    root = default_cache_root()
    outcomes: dict[str, BuildOutcome] = {}
    to_build: dict[Path, list[str]] = {}  # build folder -> the solutions with that source
    for path in dict.fromkeys(map(Path, solution_paths)):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # its job reports it, as before
        ext_dir = build_cache.extension_dir(root, source, device)
        if COMPILES_ON_IMPORT not in source:
            outcomes[str(path)] = BuildOutcome("not_built", str(ext_dir))
        elif build_cache.has_built_extension(ext_dir):
            outcomes[str(path)] = BuildOutcome("cache_hit", str(ext_dir))
        else:
            to_build.setdefault(ext_dir, []).append(str(path))
    if to_build:
        for outcome, paths in zip(
            _build(to_build, device, timeouts, at_once, on_start), to_build.values(), strict=True
        ):
            outcomes.update(dict.fromkeys(paths, outcome))
    return BuildReport(outcomes, time.monotonic() - began, at_once)


def _build(
    to_build: dict[Path, list[str]],
    device: str,
    timeouts: Timeouts,
    at_once: int,
    on_start: Callable[[int, int], None],
) -> list[BuildOutcome]:
    began: dict[int, float] = {}  # command index -> time.monotonic() as its worker started

    def started(index: int) -> Callable[[int], None]:
        def note(pid: int) -> None:
            began[index] = time.monotonic()
            on_start(len(began), len(to_build))

        return note

    scratch = Path(tempfile.mkdtemp(prefix="kbench-build-"))
    try:
        env = build_env(device, at_once)
        commands = []
        for index, (ext_dir, paths) in enumerate(to_build.items()):
            ext_dir.mkdir(parents=True, exist_ok=True)
            commands.append(
                WorkerCommand(
                    BUILD_WORKER,
                    [paths[0]],
                    scratch / f"build-{index}.log",
                    # The load phase is kbench's own (torch's import), limited like the solution worker's.
                    {"load": timeouts.run_s, "build": timeouts.build_s},
                    env={**env, "TORCH_EXTENSIONS_DIR": str(ext_dir)},
                    on_start=started(index),
                )
            )
        runs = run_workers(commands, at_once=at_once)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [_outcome(run, ext_dir, began.get(i)) for i, (run, ext_dir) in enumerate(zip(runs, to_build, strict=True))]


def build_env(device: str, at_once: int) -> dict[str, str]:
    """The solution worker's environment, with no GPU visible. nvcc then needs the target architecture named:
    the user's ``TORCH_CUDA_ARCH_LIST``, else what torch would choose for the job's GPU (its capability, +PTX),
    so the job's own import finds the same compiler commands and does not rebuild."""
    env = worker_env(None, device)
    if device.startswith("cuda") and not env.get("TORCH_CUDA_ARCH_LIST"):
        major, minor = build_cache.target_arch(device).split(".")
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}+PTX"
    env["CUDA_VISIBLE_DEVICES"] = ""
    # Builds side by side share the cores; ninja would otherwise start a compiler per core in each of them.
    env.setdefault("MAX_JOBS", str(max(1, (os.cpu_count() or 1) // at_once)))
    return env


def _outcome(run: WorkerRun, ext_dir: Path, began: float | None) -> BuildOutcome:
    worker_s = sum(run.phase_s.values())
    facts: dict[str, Any] = {"ext_dir": str(ext_dir), "worker_s": worker_s, "began": began}
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
