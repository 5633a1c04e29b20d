"""A worker's process tree, as the parent keeps it: each worker started in a process group of its own that dies
with the parent, the group killed whole, and the descendants that escape it (a double fork with a new session)
found and killed once the workers have exited.

Trusted side; the solution worker also makes itself a subreaper here, so that what its solution starts stays
beneath it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

import psutil

# prctl(2) through ctypes, not a library: psutil has no call for either setting, and the prctl wrappers on PyPI
# are unmaintained (python-prctl's last release 2020, a C extension that needs libcap headers to build;
# prctl 2010) or are themselves ctypes (pyprctl, 2021). Two integer constants do not justify a dependency.
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PR_SET_CHILD_SUBREAPER = 36


def child_setup(niceness: int) -> Callable[[], None]:
    """What the child runs before exec: get SIGKILL when the parent dies, so a killed kbench leaves no worker;
    and lower its CPU priority by ``niceness`` (its own children, compilers say, inherit it)."""

    def setup() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if niceness:
            with contextlib.suppress(OSError):
                os.nice(niceness)

    return setup


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def become_subreaper() -> None:
    """Make this process inherit its descendants that are left without a parent (Linux): a double fork with a new
    session leaves a process that is no longer in its starter's process group, but is still found here."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)


def children() -> set[int]:
    """Processes whose parent is this one (orphans are reparented here once we are a subreaper): the direct
    children only, as psutil lists them."""
    with contextlib.suppress(psutil.Error):
        return {child.pid for child in psutil.Process().children(recursive=False)}
    return set()


# Workers started and not yet closed: never taken for another worker's orphans (a worker started early, to
# wait at its gate while the current one runs, is one).
LIVE: set[int] = set()
# Held while a worker is started and entered in LIVE, and while orphans are looked for: with jobs on several
# devices, one thread's search must never find another's worker between its start and its entry in LIVE.
SPAWNING = threading.Lock()


def strays(before: set[int]) -> list[psutil.Process]:
    """Descendants that escaped a worker's process group (a double fork with setsid, say): as a subreaper, this
    process inherits them, and every child that was not here ``before`` the worker, and is no live worker, is
    one. With jobs on several devices, one job's strays are found by every job under way beside it."""
    found = []
    with SPAWNING:
        for pid in children() - before - LIVE:
            with contextlib.suppress(psutil.NoSuchProcess):
                found.append(psutil.Process(pid))
    return found


def kill_orphans(before: set[int]) -> int:
    """Kill the ``strays`` left when the workers have exited."""
    killed = 0
    for _ in range(10):  # a killed orphan's own children are reparented here in turn
        strays_left = strays(before)
        if not strays_left:
            break
        for stray in strays_left:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                stray.kill()  # psutil checks the pid still names the same process (no kill of a reused pid)
        # Our children: waiting reaps them, so none is left a zombie that the next pass would count again.
        psutil.wait_procs(strays_left, timeout=5)
        killed += len(strays_left)
    return killed
