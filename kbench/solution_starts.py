"""Starting workers: their environment, and each job's pair of workers that wait at a gate.

Trusted side. A job runs in two workers that take timing turns (``kbench.turns``): the untrusted solution worker
and the trusted reference partner, which times the reference beside it. Both do kbench's own CPU-only work first
(imports, the problem file, the reference's seeded weights), then wait at their gates until the job's turn; only
then does the solution worker import the solution. So a pair can be started early, while the job before it still
runs (``pipeline.prefetch``).
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
from kbench.device_kind import on_gpu
from kbench.devices import Device
from kbench.isolation import StartedWorker, WorkerCommand, start_worker
from kbench.spec import WorkerSpec

# A worker started early waits at its gate until the parent opens it, once the job before has ended; the
# limit is only a net under the parent itself.
GATE_WAIT_S = 86_400.0


def worker_env(cache_root: Path | None, device: str = "cuda", placement: Device | None = None) -> dict[str, str]:
    """A worker's environment: this kbench importable, the caches, and only ``placement``'s GPU visible."""
    env = dict(os.environ)
    if placement is not None:
        env.update(placement.worker_env())
    if not on_gpu(device):
        # The reference and the solution take turns on the same cores: OpenMP threads that spin after their own
        # call would take cores from the other's, and would count as the solution working in the background.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Inductor compiles in the worker's own process: with more compile threads it starts a pool of compile
    # processes (on CUDA, at a solution's first compiled call) that go on starting up and idling into the other
    # side's timing turns, where the solution's count as background work (an honest torch.compile solution was
    # rejected so on an H100) and the reference's take cores from the solution's.
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    # Workers run in a scratch folder; make sure they import this very kbench.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    caches.bytecode_env(env, cache_root)
    return env


@dataclass(frozen=True)
class SolutionStart:
    job: Any  # runner.Job
    out_dir: Path
    worker: StartedWorker  # the untrusted solution worker
    partner: StartedWorker  # the trusted reference partner it takes timing turns with
    poison_numel: int  # the output size the worker was started with

    def workers(self) -> list[StartedWorker]:
        return [self.worker, self.partner]

    def open_gates(self) -> None:
        for worker in self.workers():
            worker.open_gate()

    def close(self) -> None:
        for worker in self.workers():
            worker.close()


class SolutionStarter:
    """Starts each job's solution worker, or hands over the one started early for it."""

    def __init__(
        self,
        config: KbenchConfig,
        scratch: Path,
        cache_root: Path | None,
        spec: Callable[[Any, Path, int], WorkerSpec],  # (job, out_dir, poison_numel) -> the worker's spec
        device: str,
        placement: Device | None = None,
    ) -> None:
        self._timeouts = config.timeouts
        self._placement = placement
        self._scratch = scratch
        self._cache_root = cache_root
        self._spec = spec
        self._device = device
        self._early: SolutionStart | None = None

    def start(self, job: Any, poison_numel: int) -> SolutionStart:
        """The job's worker, waiting at its gate: the one started early for it, or a new one."""
        early, self._early = self._early, None
        if early is not None and early.job == job and early.poison_numel == poison_numel:
            return early
        if early is not None:
            early.close()  # started for another job, or with another output size: never let through
        return self.start_fresh(job, poison_numel)

    def start_fresh(self, job: Any, poison_numel: int) -> SolutionStart:
        """New workers for the job, waiting at their gates; a pair started early for the next job is left waiting."""
        out_dir = Path(tempfile.mkdtemp(prefix="job-", dir=self._scratch))
        spec_path = out_dir / "spec.json"
        self._spec(job, out_dir, poison_numel).write(spec_path)
        limits, env = self._timeouts, worker_env(self._cache_root, self._device, self._placement)
        # No solution code runs before the build phase: the load phase is kbench's own start (torch's import, the
        # problem file, the reference's seeded weights), held to the reference's limit. Under a pool of builds it
        # can take a while, and a solution's short run limit is no measure of it.
        solution = WorkerCommand(
            "kbench.untrusted.worker",
            [str(spec_path)],
            out_dir / "worker.log",
            {"load": limits.reference_s, "wait": GATE_WAIT_S, "build": limits.build_s, "run": limits.run_s},
            env=env,
            gated=True,
            turns=True,
            step_timeout=limits.step_s,
        )
        # The partner is trusted: its limits are the reference's, and it waits for the solution's turns as long as
        # the solution may take to get there; the solution's own limits end the turns sooner when it hangs or dies.
        partner = WorkerCommand(
            "kbench.reference_partner",
            [str(spec_path)],
            out_dir / "partner.log",
            {"load": limits.reference_s, "wait": GATE_WAIT_S, "turns": limits.build_s + 2 * limits.run_s},
            env=env,
            gated=True,
            turns=True,
        )
        started = start_worker(partner)
        try:
            return SolutionStart(job, out_dir, start_worker(solution), started, poison_numel)
        except BaseException:
            started.close()
            raise

    def start_early(self, job: Any, poison_numel: int) -> None:
        """Start ``job``'s worker now; a failure here only loses the head start."""
        with contextlib.suppress(Exception):
            self._early = self.start(job, poison_numel)

    def waiting(self) -> list[StartedWorker]:
        """The workers started early, if any: their channels are read while the current job runs."""
        return self._early.workers() if self._early is not None else []

    def close(self) -> None:
        if self._early is not None:
            self._early.close()  # started for a job the run did not reach
            self._early = None
