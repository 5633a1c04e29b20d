"""Run a worker module in its own process group, with per-phase timeouts, and collect its messages.

Trusted side. Whatever the worker does (hang, crash, fork, print), this returns: the worker's whole process
group is killed on a timeout and once the worker has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_TAIL_CHARS = 20_000
# A worker's messages are small; beyond these a solution is flooding the pipe, and the rest is dropped.
MAX_LINE_BYTES = 64 * 1024 * 1024
MAX_MESSAGES = 10_000
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class WorkerRun:
    messages: list[dict[str, Any]] = field(default_factory=list)
    returncode: int | None = None
    timed_out_phase: str | None = None
    timeout_s: float | None = None
    log_tail: str = ""
    garbage_lines: int = 0  # lines on the channel that were not JSON objects
    violations: list[str] = field(default_factory=list)  # messages the worker's protocol does not allow
    outputs: dict[str, str] = field(default_factory=dict)  # output file name -> digest announced on writing
    orphans_killed: int = 0  # descendants that had left the worker's process group
    phase_s: dict[str, float] = field(default_factory=dict)  # how long each phase lasted, by the parent's clock

    def last(self, key: str) -> dict[str, Any] | None:
        for message in reversed(self.messages):
            if key in message:
                return message
        return None

    def exit_description(self) -> str:
        code = self.returncode
        if code is None:
            return "did not exit"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with status {code}"


class _Protocol:
    """What a worker may say: its phases once each, in order; ``built``, ``weights``, ``result`` and
    ``error`` at most once; each output file announced once. Anything else came from the solution."""

    SINGLE = ("built", "weights", "result", "error")
    OUTPUT_NAME = re.compile(r"(new|ref)_[a-z0-9_]+\.pt")

    def __init__(self, phases: list[str], run: WorkerRun) -> None:
        self.pending = list(phases)
        self.run = run

    def accept(self, message: dict[str, Any]) -> str | None:
        """Record a message; return the phase it starts, if it starts one."""
        run = self.run
        keys = set(message)
        if keys == {"phase"}:
            if self.pending and message["phase"] == self.pending[0]:
                return self.pending.pop(0)
            run.violations.append(f"phase {message['phase']!r} out of order")
        elif keys == {"output", "digest"}:
            name = message["output"]
            if not isinstance(name, str) or not self.OUTPUT_NAME.fullmatch(name) or name in run.outputs:
                run.violations.append(f"output announcement {name!r}")
            else:
                run.outputs[name] = str(message["digest"])
        elif len(keys) == 1 and keys <= set(self.SINGLE):
            (key,) = keys
            if run.last(key) is not None:
                run.violations.append(f"second {key!r} message")
            else:
                run.messages.append(message)
        else:
            run.violations.append(f"unknown message {sorted(keys)}")
        return None


def read_log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies, so a killed kbench leaves no worker."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _children() -> set[int]:
    """Processes whose parent is this one (orphans are reparented here once we are a subreaper)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[1]) == me:
            found.add(int(entry.name))
    return found


def _kill_orphans(before: set[int]) -> int:
    """Kill descendants that escaped the worker's process group (a double fork with setsid, say): as a
    subreaper, this process inherits them, and every child that was not here before the job is one."""
    killed = 0
    for _ in range(10):  # a killed orphan's own children are reparented here in turn
        strays = _children() - before
        if not strays:
            break
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            killed += 1
    return killed


def run_worker(
    module: str,
    args: list[str],
    log_path: Path,
    phase_timeouts: Mapping[str, float],
    env: Mapping[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> WorkerRun:
    """Start ``python -m module ARGS... FD`` and follow it until it exits or runs out of time.

    ``phase_timeouts`` lists the worker's phases in order with their limits in seconds. The worker is in
    the first phase from the start; announcing the next (``{"phase": name}``) restarts the clock with that
    phase's limit. The whole run never gets longer than all limits together.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    children_before = _children() if sys.platform.startswith("linux") else set()
    read_fd, write_fd = os.pipe()
    run = WorkerRun()
    started = time.monotonic()
    phases = list(phase_timeouts)
    protocol = _Protocol(phases[1:], run)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args, str(write_fd)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            start_new_session=True,  # its own process group, killed as one
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            env=dict(env) if env is not None else None,
        )
    os.close(write_fd)
    if on_start is not None:
        on_start(proc.pid)
    phase = phases[0]
    phase_began = started
    limit = phase_timeouts[phase]
    deadline = started + limit
    final_deadline = started + sum(phase_timeouts.values())
    buffer = b""
    try:
        while True:
            now = time.monotonic()
            if now >= min(deadline, final_deadline):
                run.timed_out_phase, run.timeout_s = phase, limit
                break
            ready, _, _ = select.select([read_fd], [], [], min(0.2, min(deadline, final_deadline) - now))
            chunk = os.read(read_fd, 1 << 16) if ready else b""
            if ready and not chunk:
                break  # every writer closed the pipe: the worker is done or dead
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_LINE_BYTES:
                buffer = b""
                run.garbage_lines += 1
            for line in lines:
                message = _parse(line)
                if message is None or len(run.messages) + len(run.violations) >= MAX_MESSAGES:
                    run.garbage_lines += 1
                    continue
                started_phase = protocol.accept(message)
                if started_phase is not None:
                    phase_began = _end_phase(run, phase, phase_began)
                    phase, limit = started_phase, phase_timeouts[started_phase]
                    deadline = time.monotonic() + limit
            if not ready and proc.poll() is not None:
                break  # exited, while a child it left behind may still hold the pipe open
    finally:
        _end_phase(run, phase, phase_began)
        _kill_group(proc.pid)
        os.close(read_fd)
        run.returncode = proc.wait()
        if sys.platform.startswith("linux"):
            run.orphans_killed = _kill_orphans(children_before)
    run.log_tail = read_log_tail(log_path)
    return run


def _end_phase(run: WorkerRun, phase: str, began: float) -> float:
    """Record how long ``phase`` lasted; return now, when the next one begins."""
    now = time.monotonic()
    run.phase_s[phase] = now - began
    return now


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return message if isinstance(message, dict) else None
