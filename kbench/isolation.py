"""Run a worker module in its own process group, with per-phase timeouts, and collect its messages.

Trusted side. Whatever the worker does (hang, crash, fork, print), this returns: the worker's whole process
group is killed on a timeout and once the worker has exited.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbench.channel import STACKS_SIGNAL
from kbench.process_tree import LIVE, SPAWNING, become_subreaper, child_setup, children, kill_group, kill_orphans
from kbench.scheduling import Scheduling

LOG_TAIL_CHARS = 20_000
# A worker's messages are small; beyond these a solution is flooding the pipe, and the rest is dropped.
MAX_LINE_BYTES = 64 * 1024 * 1024
MAX_MESSAGES = 10_000
STACKS_WAIT_S = 0.5  # for a worker out of time to write its stacks to its log before it is killed


# The solution worker's run phase, step by step (kbench.untrusted.worker marks each end): its weights; the trials
# and buffers saved; the timing turns with the kept outputs saved; the perturbed-weight trials; the kernel census.
RUN_STEPS = ("weights", "trials", "turns", "perturbed", "census")
# Steps held to the step limit (WorkerCommand.step_timeout) besides the run phase's own: each makes a fixed handful
# of calls, so a hang there (a kernel that never ends) costs the step limit, not the whole run phase. The turns are
# not: their length follows the calls' and the timing plan's, and the run phase's limit bounds them.
BOUNDED_STEPS = frozenset(RUN_STEPS) - {"turns"}
# The reference worker's steps, by phase (kbench.reference_worker marks each end): its weights on the device; the
# trials and buffers saved; its timing alone; the perturbed-weight trials. Then torch.compile's first call (the
# compiling) and its timing.
REFERENCE_STEPS: dict[str, tuple[str, ...]] = {
    "run": ("weights", "trials", "timing", "perturbed"),
    "compile": ("compile_call", "compile_timing"),
}


@dataclass
class WorkerRun:
    messages: list[dict[str, Any]] = field(default_factory=list)
    returncode: int | None = None
    timed_out_phase: str | None = None
    timed_out_step: str | None = None  # the run step that outlived the step limit, when that limit ended it
    timeout_s: float | None = None
    log_tail: str = ""
    garbage_lines: int = 0  # lines on the channel that were not JSON objects
    violations: list[str] = field(default_factory=list)  # messages the worker's protocol does not allow
    # output file name -> (digest, size in bytes), as announced on writing
    outputs: dict[str, tuple[str, int]] = field(default_factory=dict)
    orphans_killed: int = 0  # descendants that had left the worker's process group
    phase_s: dict[str, float] = field(default_factory=dict)  # how long each phase lasted, by the parent's clock
    # How long each step of the run phase lasted, by the parent's clock at the worker's marks (RUN_STEPS): where
    # a job's run goes, for the throughput report. The worker decides when to mark, so it is never evidence.
    step_s: dict[str, float] = field(default_factory=dict)

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
    """What a worker may say: its phases once each, in order; ``built``, ``weights``, ``result``, ``compiled``
    (the reference worker's torch.compile baseline) and ``error`` at most once; each output file announced once.
    Anything else came from the solution."""

    SINGLE = ("built", "weights", "result", "compiled", "error")
    OUTPUT_NAME = re.compile(r"(new|ref)_[a-z0-9_]+\.kbt")

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
        elif keys == {"output", "digest", "size"}:
            name, size = message["output"], message["size"]
            valid_name = isinstance(name, str) and self.OUTPUT_NAME.fullmatch(name) and name not in run.outputs
            if not valid_name or not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
                run.violations.append(f"output announcement {name!r}")
            else:
                run.outputs[name] = (str(message["digest"]), size)
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


@dataclass(frozen=True)
class WorkerCommand:
    """``python -m module ARGS... FD [GATE_FD] [TURN_COMMAND_FD TURN_REPLY_FD]``, with its log file and its phases'
    time limits (see ``run_workers``). A gated worker gets the read end of a second pipe: it waits there, before
    anything untrusted runs, until ``StartedWorker.open_gate``. A worker that takes timing turns
    (``kbench.turns``) gets a pipe for the parent's commands and one for its replies."""

    module: str
    args: list[str]
    log_path: Path
    phase_timeouts: Mapping[str, float]
    env: Mapping[str, str] | None = None
    on_start: Callable[[int], None] | None = None  # called with the worker's pid once it runs
    gated: bool = False
    turns: bool = False
    step_timeout: float | None = None  # seconds for each of the run phase's BOUNDED_STEPS, as the worker marks them
    # The steps the worker may mark, by phase, each once (a solution worker's: the run phase's RUN_STEPS)
    steps: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {"run": RUN_STEPS})
    niceness: int = 0  # added to the worker's nice value: a build yields the cores to a GPU lane's workers


class StartedWorker:
    """One started worker: its channel read as it comes, its phase clock, its gate, and its end."""

    def __init__(self, command: WorkerCommand) -> None:
        self.read_fd, write_fd = os.pipe()
        gate_read, self._gate = os.pipe() if command.gated else (None, None)
        # The parent's ends of the turn pipes: it writes commands to one and reads replies from the other.
        self._turns_lock = threading.Lock()
        self.driven = False  # a turn driver reads the reply pipe (see release_turns)
        turn_read, self.turn_command_fd = os.pipe() if command.turns else (None, None)
        self.turn_reply_fd, turn_write = os.pipe() if command.turns else (None, None)
        child_fds = [fd for fd in (write_fd, gate_read, turn_read, turn_write) if fd is not None]
        self.run = WorkerRun()
        self.log_path = command.log_path
        started = time.monotonic()
        self.timeouts = command.phase_timeouts
        phases = list(self.timeouts)
        self.protocol = _Protocol(phases[1:], self.run)
        extra_args = [str(fd) for fd in child_fds[1:]]
        # This process's children before the worker: any that come later and are no worker are its strays.
        self.children_before = children() if sys.platform.startswith("linux") else set()
        try:
            with SPAWNING, command.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", command.module, *command.args, str(write_fd), *extra_args],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=tuple(child_fds),
                    start_new_session=True,  # its own process group, killed as one
                    preexec_fn=child_setup(command.niceness) if sys.platform.startswith("linux") else None,
                    env=dict(command.env) if command.env is not None else None,
                )
                LIVE.add(self.proc.pid)
        except BaseException:  # no worker (a full disk for its log, say): leave no pipe behind
            os.close(self.read_fd)
            self._close_gate()
            self._close_turns()
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
        # As it started, before any solution code can run beside it: a change later is another process's doing.
        self.scheduling = Scheduling.of(self.proc.pid)
        if command.on_start is not None:
            command.on_start(self.proc.pid)
        self.phase, self.phase_began = phases[0], started
        self.step_began = started
        self.limit = self.timeouts[self.phase]
        self.step_limit = command.step_timeout
        self.steps = command.steps
        self.deadline = started + self.limit
        self.final_deadline = started + sum(self.timeouts.values())
        self.buffer = b""

    def _step(self) -> str | None:
        """The step under way: the phase's first one not marked yet (None in a phase without steps)."""
        return next((step for step in self.steps.get(self.phase, ()) if step not in self.run.step_s), None)

    def _step_deadline(self) -> float:
        if self.step_limit is None or self._step() not in BOUNDED_STEPS:
            return math.inf
        return self.step_began + self.step_limit

    def time_left(self, now: float) -> float:
        return min(self.deadline, self.final_deadline, self._step_deadline()) - now

    def expired(self, now: float) -> bool:
        if self.time_left(now) > 0:
            return False
        self.run.timed_out_phase, self.run.timeout_s = self.phase, self.limit
        if self._step_deadline() <= now and self.step_limit is not None:
            self.run.timed_out_step, self.run.timeout_s = self._step(), self.step_limit
        return True

    def dump_stacks(self) -> None:
        """Ask the worker to write where each of its threads is to its log (see ``channel.STACKS_SIGNAL``)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.proc.pid, STACKS_SIGNAL)
            time.sleep(STACKS_WAIT_S)

    def read(self) -> bool:
        """Take what the channel has; False once every writer has closed it (the worker is done or dead)."""
        chunk = os.read(self.read_fd, 1 << 16)
        if not chunk:
            return False
        *lines, self.buffer = (self.buffer + chunk).split(b"\n")
        if len(self.buffer) > MAX_LINE_BYTES:
            self.buffer = b""
            self.run.garbage_lines += 1
        for line in lines:
            message = _parse(line)
            if message is None or len(self.run.messages) + len(self.run.violations) >= MAX_MESSAGES:
                self.run.garbage_lines += 1
                continue
            if set(message) == {"step"}:
                self._mark_step(message["step"])
                continue
            started_phase = self.protocol.accept(message)
            if started_phase is not None:
                self.phase_began = self.step_began = _end_phase(self.run, self.phase, self.phase_began)
                self.phase, self.limit = started_phase, self.timeouts[started_phase]
                self.deadline = time.monotonic() + self.limit
        return True

    def _mark_step(self, name: Any) -> None:
        """A step of the phase ended now; each once, in its own phase only (anything else came from the
        solution)."""
        if name not in self.steps.get(self.phase, ()) or name in self.run.step_s:
            self.run.violations.append(f"step {name!r}")
            return
        now = time.monotonic()
        self.run.step_s[name], self.step_began = now - self.step_began, now

    @property
    def pid(self) -> int:
        return self.proc.pid

    def open_gate(self) -> None:
        """Let a gated worker go on past its gate (a no-op for a worker without one)."""
        if self._gate is not None:
            with contextlib.suppress(OSError):  # it may have died meanwhile: following it will tell
                os.write(self._gate, b"go")
            self._close_gate()

    def _close_gate(self) -> None:
        if self._gate is not None:
            os.close(self._gate)  # a worker still waiting reads end-of-file and leaves
            self._gate = None

    def end_turns(self) -> None:
        """Close the command end of the turn pipes: a worker waiting for a command reads end-of-file and leaves.
        Called from the turn driver's thread, and again at close: the lock keeps one descriptor from being closed
        twice (its number may already belong to another file by then)."""
        with self._turns_lock:
            if self.turn_command_fd is not None:
                os.close(self.turn_command_fd)
                self.turn_command_fd = None

    def release_turns(self) -> None:
        """Close the reply end too; once the turn driver, which reads it in its own thread, has returned."""
        self.end_turns()
        with self._turns_lock:
            if self.turn_reply_fd is not None:
                os.close(self.turn_reply_fd)
                self.turn_reply_fd = None

    def _close_turns(self) -> None:
        if self.driven:
            self.end_turns()  # the driver may still read replies: whoever started it releases them
        else:
            self.release_turns()

    def drain(self) -> None:
        """Read whatever the channel holds now, without waiting for more."""
        while select.select([self.read_fd], [], [], 0)[0] and self.read():
            pass

    def close(self) -> None:
        _end_phase(self.run, self.phase, self.phase_began)
        self._close_gate()
        kill_group(self.proc.pid)
        os.close(self.read_fd)
        self._close_turns()
        self.run.returncode = self.proc.wait()
        LIVE.discard(self.proc.pid)
        self.run.log_tail = read_log_tail(self.log_path)


def start_worker(command: WorkerCommand) -> StartedWorker:
    """Start a worker now, to be followed later by ``run_workers`` (its phase clock runs from now)."""
    return StartedWorker(command)


def run_workers(
    commands: list[WorkerCommand],
    at_once: int | None = None,
    started: list[StartedWorker] | None = None,
    watch: list[StartedWorker] | None = None,
) -> list[WorkerRun]:
    """Run the workers, ``at_once`` at a time (default: all), each followed until it exits or runs out of
    time; their runs, in order: first those ``started`` already (by ``start_worker``), then ``commands``.
    Workers in ``watch`` (started early, to be followed later) have their channel read meanwhile, so their
    phase clocks keep time; nothing waits for them.

    ``phase_timeouts`` lists a worker's phases in order with their limits in seconds. The worker is in the
    first phase from the start; announcing the next (``{"phase": name}``) restarts the clock with that
    phase's limit. The whole run never gets longer than all limits together. Descendants that escaped a
    worker's process group are killed once every worker has exited, so none of the others is taken for one;
    each run reports how many there were, for all the workers together.
    """
    become_subreaper()
    children_before = children() if sys.platform.startswith("linux") else set()
    followers: list[StartedWorker] = list(started or [])
    active: list[StartedWorker] = list(followers)
    watched: list[StartedWorker] = list(watch or [])
    waiting = list(commands)
    try:
        while active or waiting:
            while waiting and len(active) < (at_once or len(commands)):
                followers.append(StartedWorker(waiting.pop(0)))
                active.append(followers[-1])
            now = time.monotonic()
            for follower in [f for f in active if f.expired(now)]:
                active.remove(follower)
                follower.dump_stacks()
                follower.close()
            if not active:
                continue
            wait = min(0.2, *(f.time_left(now) for f in active))
            ready, _, _ = select.select([f.read_fd for f in active + watched], [], [], max(0.0, wait))
            for early in [w for w in watched if w.read_fd in ready]:
                if not early.read():
                    watched.remove(early)  # it is gone; following it later will say how
            for follower in list(active):
                # Done when the channel is closed, or when the worker exited while a child it left
                # behind still holds the channel open (what it wrote before exiting is read first: closing
                # another worker in this pass may have taken long enough for it to write and exit).
                if follower.read_fd in ready:
                    done = not follower.read()
                else:
                    done = follower.proc.poll() is not None
                    if done:
                        follower.drain()
                if done:
                    active.remove(follower)
                    follower.close()
    finally:
        for follower in active:
            follower.close()
        orphans = kill_orphans(children_before) if sys.platform.startswith("linux") else 0
    for follower in followers:
        follower.run.orphans_killed = orphans
    return [follower.run for follower in followers]


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
