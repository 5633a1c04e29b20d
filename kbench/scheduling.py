"""How the kernel schedules a process's main thread on the CPU: its affinity, nice value and policy.

Why: the reference partner's main thread launches the reference's work, and its turns are timed beside the
solution's. A solution running as the same user can pin that thread to a core a thread of its own keeps busy now and
then, lower its priority, or give it SCHED_IDLE, and so slow the reference a little at a time, under the CPU time
that counts as background work and under the slowdown that counts as ``reference_slowed``. kbench never changes a
worker's scheduling after starting it, so a change is another process's doing.

Trusted side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# OpenMP binds each thread it starts, the main thread included, when one of these asks it to: the partner's
# affinity then changes by itself, and only its nice value and policy can be held to what it started with.
OPENMP_BINDING = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")
_POLICY_NAMES = {
    getattr(os, name): name
    for name in ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE", "SCHED_FIFO", "SCHED_RR")
    if hasattr(os, name)
}


def openmp_binds_threads() -> bool:
    """Whether this environment, which the workers inherit, asks OpenMP to bind its threads."""
    values = [os.environ.get(name, "").strip().lower() for name in OPENMP_BINDING]
    return any(value not in ("", "false", "none", "disabled") for value in values)


@dataclass(frozen=True)
class Scheduling:
    affinity: frozenset[int]
    nice: int
    policy: int

    @classmethod
    def of(cls, pid: int) -> Scheduling | None:
        """``pid``'s main thread's scheduling; None where it cannot be read (the process is gone; not Linux)."""
        try:
            affinity = frozenset(os.sched_getaffinity(pid))
            return cls(affinity, os.getpriority(os.PRIO_PROCESS, pid), os.sched_getscheduler(pid))
        except (OSError, AttributeError):
            return None

    def changes(self, now: Scheduling, affinity: bool = True) -> list[str]:
        """What differs in ``now`` from this, in words; the affinity only where ``affinity``."""
        found = []
        if affinity and now.affinity != self.affinity:
            found.append(f"CPU affinity {_cpus(self.affinity)} -> {_cpus(now.affinity)}")
        if now.nice != self.nice:
            found.append(f"nice {self.nice} -> {now.nice}")
        if now.policy != self.policy:
            found.append(
                f"policy {_POLICY_NAMES.get(self.policy, self.policy)} -> {_POLICY_NAMES.get(now.policy, now.policy)}"
            )
        return found


def _cpus(cpus: frozenset[int]) -> str:
    return "{" + ",".join(map(str, sorted(cpus))) + "}"
