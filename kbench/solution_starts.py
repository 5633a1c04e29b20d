"""Starting workers: their environment, and solution workers that wait at a gate.

Trusted side. A solution worker does kbench's own CPU-only work first (imports, the problem file, the
reference's seeded weights), then waits at its gate until its job's turn; only then does it import the
solution. So one can be started early, while the job before it still runs (``pipeline.prefetch``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbench import caches
from kbench.catalog import PACKAGE_DIR
from kbench.config import KbenchConfig
from kbench.isolation import StartedWorker, WorkerCommand, start_worker
from kbench.spec import WorkerSpec

# A worker started early waits at its gate until the parent opens it, once the job before has ended; the
# limit is only a net under the parent itself.
GATE_WAIT_S = 86_400.0


def worker_env(cache_root: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    # Workers run in a scratch folder; make sure they import this very kbench.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    caches.bytecode_env(env, cache_root)
    return env


@dataclass(frozen=True)
class SolutionStart:
    job: Any  # runner.Job
    out_dir: Path
    worker: StartedWorker
    poison_numel: int  # the output size the worker was started with


class SolutionStarter:
    """Starts each job's solution worker, or hands over the one started early for it."""

    def __init__(
        self,
        config: KbenchConfig,
        scratch: Path,
        cache_root: Path | None,
        spec: Callable[[Any, Path, int], WorkerSpec],  # (job, out_dir, poison_numel) -> the worker's spec
    ) -> None:
        self._timeouts = config.timeouts
        self._scratch = scratch
        self._cache_root = cache_root
        self._spec = spec
        self._early: SolutionStart | None = None

    def start(self, job: Any, poison_numel: int) -> SolutionStart:
        """The job's worker, waiting at its gate: the one started early for it, or a new one."""
        early, self._early = self._early, None
        if early is not None and early.job == job and early.poison_numel == poison_numel:
            return early
        if early is not None:
            early.worker.close()  # started for another job, or with another output size: never let through
        return self.start_fresh(job, poison_numel)

    def start_fresh(self, job: Any, poison_numel: int) -> SolutionStart:
        """A new worker for the job, waiting at its gate; one started early for the next job is left waiting."""
        out_dir = Path(tempfile.mkdtemp(prefix="job-", dir=self._scratch))
        spec_path = out_dir / "spec.json"
        self._spec(job, out_dir, poison_numel).write(spec_path)
        limits = self._timeouts
        command = WorkerCommand(
            "kbench.untrusted.worker",
            [str(spec_path)],
            out_dir / "worker.log",
            {"load": limits.run_s, "wait": GATE_WAIT_S, "build": limits.build_s, "run": limits.run_s},
            env=worker_env(self._cache_root),
            gated=True,
        )
        return SolutionStart(job, out_dir, start_worker(command), poison_numel)

    def start_early(self, job: Any, poison_numel: int) -> None:
        """Start ``job``'s worker now; a failure here only loses the head start."""
        with contextlib.suppress(Exception):
            self._early = self.start(job, poison_numel)

    def waiting(self) -> list[StartedWorker]:
        """The worker started early, if any: its channel is read while the current job runs."""
        return [self._early.worker] if self._early is not None else []

    def close(self) -> None:
        if self._early is not None:
            self._early.worker.close()  # started for a job the run did not reach
            self._early = None
