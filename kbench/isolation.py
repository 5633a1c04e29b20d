"""Run a worker module in its own process group, with per-phase timeouts, and collect its messages.

Trusted side. Whatever the worker does (hang, crash, fork, print), this returns: the worker's whole process
group is killed on a timeout and once the worker has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
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


@dataclass
class WorkerRun:
    messages: list[dict[str, Any]] = field(default_factory=list)
    returncode: int | None = None
    timed_out_phase: str | None = None
    timeout_s: float | None = None
    log_tail: str = ""
    wall_s: float = 0.0
    garbage_lines: int = 0  # lines on the channel that were not JSON objects

    def last(self, key: str) -> dict[str, Any] | None:
        for message in reversed(self.messages):
            if key in message:
                return message
        return None

    def count(self, key: str) -> int:
        return sum(1 for message in self.messages if key in message)

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


def run_worker(
    module: str,
    args: list[str],
    log_path: Path,
    phase_timeouts: Mapping[str, float],
    first_phase: str = "load",
    env: Mapping[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> WorkerRun:
    """Start ``python -m module ARGS... FD`` and follow it until it exits or a phase runs out of time.

    ``phase_timeouts`` maps each phase the worker announces (``{"phase": name}``) to its limit in seconds;
    the clock restarts at each announcement. An unknown phase keeps the previous limit.
    """
    read_fd, write_fd = os.pipe()
    run = WorkerRun()
    started = time.monotonic()
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
    phase = first_phase
    limit = phase_timeouts[phase]
    deadline = started + limit
    buffer = b""
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                run.timed_out_phase, run.timeout_s = phase, limit
                break
            ready, _, _ = select.select([read_fd], [], [], min(0.2, deadline - now))
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
                if message is None or len(run.messages) >= MAX_MESSAGES:
                    run.garbage_lines += 1
                    continue
                run.messages.append(message)
                if isinstance(message.get("phase"), str):
                    phase = message["phase"]
                    limit = phase_timeouts.get(phase, limit)
                    deadline = time.monotonic() + limit
            if not ready and proc.poll() is not None:
                break  # exited, while a child it left behind may still hold the pipe open
    finally:
        _kill_group(proc.pid)
        os.close(read_fd)
        run.returncode = proc.wait()
    run.wall_s = time.monotonic() - started
    run.log_tail = read_log_tail(log_path)
    return run


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return message if isinstance(message, dict) else None
