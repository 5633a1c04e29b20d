"""Interleaved timing across two processes: the parent makes the reference and the solution take turns.

Trusted side. The reference is timed in a trusted partner process, the solution in its own untrusted worker; in each
round the parent lets the reference make one call, waits until it and all its work have finished, then lets the
solution make one (``kbench.turn_taker`` is the workers' side). Drift in the GPU's or host's speed still hits both
alike, round by round, while nothing the solution does to its own process (threads, torch settings, the allocator)
can reach the reference's, nor can it see the reference's objects, outputs or freed memory.

The parent also:
- picks, after each solution call, whether to keep that round's outputs for comparison: a uniform random sample of
  ``checked`` timed rounds (reservoir sampling), so the solution cannot know which of its calls will be checked;
- measures the CPU time the solution's processes use during the reference's turns (a busy thread there would
  take cores from the reference), with ``psutil``.
"""

from __future__ import annotations

import json
import os
import random
import select
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil

from kbench.isolation import StartedWorker
from kbench.process_tree import strays
from kbench.scheduling import Scheduling, openmp_binds_threads
from kbench.timing import TimingPlan, collect, warm_up

MAX_REPLY_BYTES = 1 << 20  # a batch's samples; anything longer is a solution flooding the pipe
POLL_S = 0.2


class TurnsBroken(Exception):
    """A worker left the turns: it died, closed its pipe, or said something the protocol does not allow."""

    def __init__(self, who: str, why: str) -> None:
        super().__init__(f"{who}: {why}")
        self.who = who


@dataclass
class WorkerTurns:
    """The parent's end of one worker's turn pipes."""

    label: str  # "reference" or "solution"
    command_fd: int  # the parent writes commands here
    reply_fd: int  # and reads replies here
    pid: int
    alive: Callable[[], bool]  # whether the worker process still runs
    end: Callable[[], None]  # close the command pipe: a worker waiting for a command leaves
    scheduling: Scheduling | None = None  # its main thread's, as it started (kbench.scheduling)
    strays: Callable[[], list[psutil.Process]] = list  # processes that escaped its process tree (process_tree.strays)
    _buffer: bytes = b""
    _processes: list[psutil.Process] = field(default_factory=list)

    def send(self, **message: Any) -> None:
        data = memoryview((json.dumps(message) + "\n").encode())
        try:
            while data:
                data = data[os.write(self.command_fd, data) :]
        except OSError as exc:
            raise TurnsBroken(self.label, f"its turn pipe is closed ({exc.strerror})") from None

    def expect(self, key: str, stop: threading.Event) -> Any:
        """The next reply, which must carry ``key``; waits until it comes, the worker is gone, or ``stop``."""
        return self.expect_one((key,), stop)[1]

    def expect_one(self, keys: tuple[str, ...], stop: threading.Event) -> tuple[str, Any]:
        """The next reply, which must carry one of ``keys``: (its key, its value)."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise TurnsBroken(self.label, "a reply longer than the protocol allows")
            ready, _, _ = select.select([self.reply_fd], [], [], POLL_S)
            if ready:
                chunk = os.read(self.reply_fd, 1 << 16)
                if not chunk:
                    raise TurnsBroken(self.label, "it closed its turn pipe (it ended or died)")
                self._buffer += chunk
            elif stop.is_set() or not self.alive():
                raise TurnsBroken(self.label, "it ended before its turn was over")
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            message = None
        if not isinstance(message, dict) or len(message) != 1 or next(iter(message)) not in keys:
            raise TurnsBroken(self.label, f"expected {' or '.join(map(repr, keys))}, got {line[:200]!r}")
        key = next(iter(message))
        return key, message[key]

    def find_processes(self) -> None:
        """The worker, its child processes, and those that escaped its tree (a double fork with a new session, which
        the parent inherits as a subreaper), found again once a batch: finding children reads every process's
        record in /proc, too slow to do around every call on a busy host."""
        found = []
        for root in self._roots():
            try:
                found += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        self._processes = found

    def _roots(self) -> list[psutil.Process]:
        try:
            worker = [psutil.Process(self.pid)]
        except psutil.Error:
            worker = []
        return worker + self.strays()

    def rescheduled(self, affinity: bool) -> list[str]:
        """How its main thread's scheduling changed since it started, in words (none where it cannot be read); its
        affinity only where ``affinity``."""
        now = Scheduling.of(self.pid)
        if self.scheduling is None or now is None:
            return []
        return self.scheduling.changes(now, affinity)

    def cpu_s(self) -> float:
        """CPU seconds used so far by the processes last found and by the children they waited for (a child
        started and ended within a turn counts too; a process gone since counts no more)."""
        total = 0.0
        for member in self._processes:
            try:
                times = member.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total


@dataclass
class Interleaved:
    """What the parent measured while the two took turns."""

    samples_ms: list[list[float]] = field(default_factory=lambda: [[], []])  # [reference, solution], per round
    # Each timed round's turns as the parent's clock saw them, from its "go" to the worker's "done": what a side's
    # sample leaves out of its turn (the L2 flush, the device-wide synchronise, the pipe) is its turn minus its
    # sample, which ``overhead_ms`` compares between the sides.
    turn_ms: list[list[float]] = field(default_factory=lambda: [[], []])
    kept: list[int] = field(default_factory=list)  # timed rounds whose outputs both saved, to be compared
    adopted: list[int] = field(default_factory=list)  # kept rounds whose solution output the partner saved
    handoff_refused: str | None = None  # why the partner first refused to copy a staged output, if it did
    mode: str = "events"  # the mode used
    fallback: str | None = None  # why the configured mode could not be used
    error: str | None = None  # why the turns did not finish
    failed: str | None = None  # which side broke them: "reference" or "solution"
    background_cpu_s: float = 0.0  # CPU time the solution's processes used during the reference's turns
    reference_turns_s: float = 0.0  # wall time of those turns
    reference_rescheduled: list[str] = field(default_factory=list)  # how the partner's scheduling changed, first seen
    rounds: int = 0  # rounds run, warm-up included
    wall_s: float = 0.0
    # Ended before any round: the partner found the solution's trials wrong (``trial_comparison.wrong_answers``),
    # so its verdict is ``incorrect`` whatever a timing would show, and none was taken.
    skipped: bool = False


class _Driver:
    def __init__(self, reference: WorkerTurns, solution: WorkerTurns, checked: int, stop: threading.Event) -> None:
        self.sides = (reference, solution)
        self.checked = checked
        self.stop = stop
        self.result = Interleaved()
        self._rng = random.Random(int.from_bytes(os.urandom(8), "little"))  # unguessable by the solution
        self._timed_rounds = 0  # timed rounds seen so far, for the reservoir
        self._adopted: dict[int, bool] = {}  # slot -> whether the partner holds the solution's output in it
        self._affinity_held = not openmp_binds_threads()  # read once: it is checked after every reference turn

    def batch(self, first: int, count: int, timed: bool) -> list[list[float]]:
        reference, solution = self.sides
        solution.find_processes()
        for side in self.sides:
            side.send(batch=[first, count])
        slot: int | None = None
        turns: list[list[float]] = [[], []]
        for index in range(first, first + count):
            before = solution.cpu_s()
            began = time.perf_counter()
            self._turn(reference, index)
            ended = time.perf_counter()
            self.result.reference_turns_s += ended - began
            self.result.background_cpu_s += max(0.0, solution.cpu_s() - before)
            if not self.result.reference_rescheduled:  # after each of its turns, which a change would have slowed
                self.result.reference_rescheduled = reference.rescheduled(self._affinity_held)
            began_solution = time.perf_counter()
            self._turn(solution, index)
            turns[0].append((ended - began) * 1e3)
            turns[1].append((time.perf_counter() - began_solution) * 1e3)
            self.result.rounds += 1
            slot = self._slot(index) if timed else None
            if slot is not None and index < first + count - 1:
                self._save(index, slot)
        samples = [self._samples(side, count) for side in self.sides]
        if timed:
            for kept, walls in zip(self.result.turn_ms, turns, strict=True):
                kept.extend(walls)
        if slot is not None:
            self._save(first + count - 1, slot)  # the last call's output is kept once its batch has ended
        return samples

    def _turn(self, side: WorkerTurns, index: int) -> None:
        side.send(go=index)
        if side.expect("done", self.stop) != index:
            raise TurnsBroken(side.label, f"it finished a round other than {index}")

    def _samples(self, side: WorkerTurns, count: int) -> list[float]:
        samples = side.expect("samples", self.stop)
        if not isinstance(samples, list) or len(samples) != count:
            raise TurnsBroken(side.label, f"it sent {type(samples).__name__} for {count} samples")
        if not all(isinstance(s, int | float) and not isinstance(s, bool) and 0 < s < float("inf") for s in samples):
            raise TurnsBroken(side.label, "it sent a sample that is not a positive finite number")
        return [float(s) for s in samples]

    def _slot(self, index: int) -> int | None:
        """Reservoir sampling: after n timed rounds, each has had the same chance of being among those kept. The
        slot the round's output goes to (replacing the round kept there), or None."""
        self._timed_rounds += 1
        kept = self.result.kept
        if len(kept) < self.checked:
            kept.append(index)
            return len(kept) - 1
        slot = self._rng.randrange(self._timed_rounds)
        if slot < self.checked:
            kept[slot] = index
            return slot
        return None

    def _save(self, index: int, slot: int) -> None:
        """Round ``index``'s outputs leave the solution's process before its next call: staged by the solution and
        copied out by the partner (``kbench.handoff``), or saved by the solution where that cannot be done."""
        reference, solution = self.sides
        # After one refusal the solution saves files: staging what the partner will refuse again costs a copy and
        # two more messages per keep.
        solution.send(keep=index, slot=slot, **({"file": True} if self.result.handoff_refused else {}))
        said, layout = solution.expect_one(("kept", "staged"), self.stop)
        if (layout.get("round") if said == "staged" and isinstance(layout, dict) else layout) != index:
            raise TurnsBroken(solution.label, f"it kept a round other than {index}")
        if said == "staged" and self.result.handoff_refused:
            raise TurnsBroken(solution.label, "it staged an output it was told to save")
        reference.send(keep=index, slot=slot, adopt=layout if said == "staged" else None)
        answer, why = reference.expect_one(("kept", "refused"), self.stop)
        if answer == "kept" and why != index:
            raise TurnsBroken(reference.label, f"it kept a round other than {index}")
        self._adopted[slot] = said == "staged" and answer == "kept"
        if answer == "refused":
            self.result.handoff_refused = self.result.handoff_refused or str(why)[:500]
            solution.send(save=index)
            if solution.expect("kept", self.stop) != index:
                raise TurnsBroken(solution.label, f"it saved a round other than {index}")

    def adopted_rounds(self) -> list[int]:
        return sorted(self.result.kept[slot] for slot, adopted in self._adopted.items() if adopted)

    def trials_wrong(self) -> bool:
        """Ask the partner, before any round, to compare the solution's trials (both workers' are done once both
        said ready): whether their answers are wrong already."""
        reference, _ = self.sides
        reference.send(check=True)
        return reference.expect("checked", self.stop) is True

    def set_up(self, mode: str, index: int) -> None:
        """Graph capture or the profiler's probe, each side alone; both fall back to events if either cannot."""
        for side in self.sides:
            side.send(setup=mode, round=index)
            why = side.expect("setup", self.stop)
            if why is not None:
                why = str(why)[:500]  # the worker's own words name the model that could not be set up ...
                self.result.fallback = why if why.startswith(f"the {side.label} ") else f"the {side.label}: {why}"
                for each in self.sides:
                    each.send(events=True)
                    each.expect("setup", self.stop)
                return
        self.result.mode = mode


def overhead_ms(turns: Interleaved) -> dict[str, float] | None:
    """Each side's median of (its turn as the parent timed it - its own sample) over the timed rounds: the time a
    turn spends outside the timed call. The two sides' turns differ only in their calls and in the solution
    worker's checks of its outputs and inputs, so a solution whose reported samples leave out part of its calls
    (a timer hooked to report less) shows an overhead well above the reference's. Recorded, not yet judged: how far
    honest solutions' overheads stand above the reference's is to be measured first (docs/verdicts.md)."""
    pairs = [
        [turn - sample for turn, sample in zip(walls, samples, strict=False)]
        for walls, samples in zip(turns.turn_ms, turns.samples_ms, strict=True)
    ]
    if not all(pairs):
        return None
    return {side: statistics.median(values) for side, values in zip(("reference", "solution"), pairs, strict=True)}


def interleave(
    reference: WorkerTurns, solution: WorkerTurns, plan: TimingPlan, checked: int, stop: threading.Event
) -> Interleaved:
    """Warm up, set up the plan's mode, then time rounds until the plan's stopping rule holds; tell both to finish.
    First, the partner compares the solution's trials: where they are wrong already, both finish at once, untimed
    (``skipped``). Never raises: a side that breaks the turns ends them, and ``error``/``failed`` say how. Both
    command pipes are closed on return, so a worker still waiting for a command ends."""
    driver = _Driver(reference, solution, checked, stop)
    result = driver.result
    started = time.perf_counter()
    try:
        for side in driver.sides:
            if side.expect("ready", stop) is not True:
                raise TurnsBroken(side.label, "it was not ready")
        if driver.trials_wrong():
            result.skipped = True
            for side in driver.sides:
                side.send(finish=[], skip=True)
            return result
        index = warm_up(lambda first, count: driver.batch(first, count, timed=False), plan)
        if plan.mode != "events":
            driver.set_up(plan.mode, index)
            index += 1
        result.samples_ms = collect(lambda first, count: driver.batch(first, count, timed=True), index, 2, plan)
        result.adopted = driver.adopted_rounds()
        result.kept.sort()
        for side in driver.sides:
            side.send(finish=result.kept)
    except TurnsBroken as exc:
        result.error, result.failed = str(exc), exc.who
    finally:
        result.wall_s = time.perf_counter() - started
        for side in driver.sides:
            side.end()
    return result


def worker_turns(worker: StartedWorker, label: str) -> WorkerTurns:
    """A started worker's turn pipes, for the driver; the worker's reply pipe is released by ``driven``."""
    if worker.turn_command_fd is None or worker.turn_reply_fd is None:
        raise ValueError(f"the {label} worker was started without turn pipes")
    worker.driven = True
    return WorkerTurns(
        label,
        worker.turn_command_fd,
        worker.turn_reply_fd,
        worker.pid,
        lambda: worker.proc.poll() is None,
        worker.end_turns,
        worker.scheduling,
        lambda: strays(worker.children_before),
    )


@contextmanager
def driven(reference: StartedWorker, solution: StartedWorker, plan: TimingPlan, checked: int) -> Iterator[Interleaved]:
    """Drive the two workers' turns in a thread while the block follows them (``isolation.run_workers``). The
    yielded result is filled in when the block ends: the driver has returned by then."""
    stop = threading.Event()
    result = Interleaved()
    sides = worker_turns(reference, "reference"), worker_turns(solution, "solution")

    def drive() -> None:
        found = interleave(*sides, plan, checked, stop)
        result.__dict__.update(found.__dict__)

    thread = threading.Thread(target=drive, name="kbench-turns", daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        for worker in (reference, solution):
            worker.release_turns()
