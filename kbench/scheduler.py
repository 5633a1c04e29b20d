"""The scheduler: what runs where. One lane per device, each running one job at a time; jobs go to the lanes
in order, a problem's jobs together, each job once its solution's build has ended.

Timing fidelity first: a lane times one job at a time on its device, and no two lanes share a device, so no two
timed jobs ever share a GPU (or the CPU). Builds (``build_pool``) run beside the lanes. On a GPU a lane compares
a job's outputs (on the CPU) while its next job runs, one job behind at most (``pipeline.judge_beside``); on the
CPU, where that work would share the cores being timed, it judges each job before the next.

Trusted side: lanes drive ``Runner``s, whose workers are separate processes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from kbench.devices import Device
from kbench.results import JobResult
from kbench.runner import Finish, Job


class LaneRunner(Protocol):
    """What a lane needs of a runner (``kbench.runner.Runner``; tests pass fakes)."""

    @property
    def judges_beside(self) -> bool: ...

    def start(self, job: Job, next_job: Job | None = None) -> Finish: ...

    def prepare_reference(self, job: Job, then: Job | None = None) -> dict[str, float]: ...


@dataclass
class Progress:
    """Where a run stands: built / running / judged / left, and its rate so far."""

    jobs: int
    builds_done: Callable[[], int] = lambda: 0
    builds_total: int = 0
    running: int = 0
    judging: int = 0  # run, and being judged (or waiting for it) while the lane's next job runs
    judged: int = 0
    began: float = field(default_factory=time.monotonic)

    @property
    def left(self) -> int:
        return self.jobs - self.judged - self.running - self.judging

    def per_hour(self) -> float:
        elapsed = time.monotonic() - self.began
        return 3600.0 * self.judged / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        built = f"built {self.builds_done()}/{self.builds_total} · " if self.builds_total else ""
        judging = f"judging {self.judging} · " if self.judging else ""
        return (
            f"{built}running {self.running} · {judging}judged {self.judged}/{self.jobs} · left {self.left} · "
            f"{self.per_hour():.0f} jobs/h"
        )


def chunks(jobs: list[Job], lanes: int) -> list[list[Job]]:
    """The jobs in order, a problem's jobs (at the same sizes) together so that a lane runs the problem's
    reference once for them, cut so that no chunk holds more than its share of the run: one problem with many
    solutions still spreads over every lane."""
    share = max(1, math.ceil(len(jobs) / max(1, lanes)))
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        groups.setdefault((str(job.problem.path), repr(sorted(job.overrides.items()))), []).append(job)
    return [group[i : i + share] for group in groups.values() for i in range(0, len(group), share)]


@dataclass
class Lane:
    """One device and the runner that times jobs on it."""

    device: Device
    runner: LaneRunner


class Scheduler:
    """Runs jobs on lanes, one per device. ``open_lane(device)`` gives a context manager yielding the lane's
    runner (made and closed in the lane's own thread: its workers die with that thread). ``settled(job)`` is a
    job's result when its build already decided it (compile error), waiting for that build; else None.
    ``on_start(job, device)`` and ``on_result(result)`` are called one at a time, whatever lane they come from."""

    def __init__(
        self,
        devices: list[Device],
        open_lane: Callable[[Device], AbstractContextManager[LaneRunner]],
        settled: Callable[[Job], JobResult | None],
        on_start: Callable[[Job, Device], None] = lambda job, device: None,
        on_result: Callable[[JobResult], None] = lambda result: None,
        on_lane: Callable[[LaneRunner, list[list[Job]]], None] = lambda runner, pending: None,
        ready: Callable[[Job], bool] = lambda job: True,
    ) -> None:
        if not devices:
            raise ValueError("a scheduler needs at least one device")
        self.devices = devices
        self._open_lane, self._settled = open_lane, settled
        self._on_start, self._on_result, self._on_lane = on_start, on_result, on_lane
        self._ready = ready  # its build has ended: ready jobs go first, so no lane waits while one could run
        self._lock = threading.Lock()
        self._queue: list[list[Job]] = []
        self._failure: BaseException | None = None
        self.progress = Progress(0)

    def run(self, jobs: list[Job], progress: Progress | None = None) -> list[JobResult]:
        """Every job's result, in the order they finished. An error raised by ``on_result`` (a full disk, say)
        stops every lane after its current job and is raised here; results recorded before it are kept."""
        self.progress = progress or Progress(len(jobs))
        pending = chunks(jobs, len(self.devices))
        self._queue = list(pending)
        results: list[JobResult] = []
        if len(self.devices) == 1:  # no thread: a one-device run is what it always was
            self._lane(self.devices[0], results, pending)
        else:
            threads = [
                threading.Thread(target=self._guarded, args=(device, results, pending), daemon=True)
                for device in self.devices
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():  # a timed join: Ctrl-C still reaches the main thread
                    thread.join(0.5)
        if self._failure is not None:
            raise self._failure
        return results

    def _guarded(self, device: Device, results: list[JobResult], pending: list[list[Job]]) -> None:
        try:
            self._lane(device, results, pending)
        except BaseException as exc:  # raised again in run(), in the main thread
            with self._lock:
                self._failure = self._failure or exc

    def _lane(self, device: Device, results: list[JobResult], pending: list[list[Job]]) -> None:
        # The judging ends before the runner closes: its outputs lie in the runner's scratch folder.
        with self._open_lane(device) as runner, _JudgingBeside(self, results) as beside:
            self._on_lane(runner, pending)
            while (chunk := self._next_chunk()) is not None:
                while chunk and self._failure is None:  # a result judged beside that could not be recorded
                    job = self._pop_ready(chunk)
                    next_job = self._guess_next(chunk)
                    lane_s = self._references_ahead(runner, job, chunk)
                    waited = time.monotonic()
                    result = self._settled(job)  # waits for the job's build, if it has not ended
                    lane_s["build_wait"] = round(time.monotonic() - waited, 3)  # the lane idle: on the critical path
                    if result is not None:
                        _add_stages(result, lane_s)
                        self._finish(result, results)
                        continue
                    with self._lock:
                        self.progress.running += 1
                        self._on_start(job, device)
                    finish = runner.start(job, next_job=next_job)
                    if runner.judges_beside:
                        beside.hand_over(finish, lane_s)
                    else:
                        result = finish()
                        _add_stages(result, lane_s)
                        self._finish(result, results, running=True)

    def _references_ahead(self, runner: LaneRunner, job: Job, chunk: list[Job]) -> dict[str, float]:
        """While ``job``'s build runs the lane would idle: it runs the references of its coming jobs instead, the
        job's own first, each timed alone on the lane's device as it would be when its job came. With one lane
        every queued job is its own; with several, only those of its chunk. The seconds it spent, as the job's
        ``references_ahead`` stage, and the phases and steps of the references it ran (none when the build had
        ended)."""
        if self._ready(job):
            return {}
        began = time.monotonic()
        coming = [job, *chunk]
        if len(self.devices) == 1:
            with self._lock:
                coming += [queued for queued_chunk in self._queue for queued in queued_chunk]
        spent: dict[str, float] = {}
        for index, upcoming in enumerate(coming):
            if self._ready(job) or self._failure is not None:
                break
            then = coming[index + 1] if index + 1 < len(coming) else None
            for part, seconds in runner.prepare_reference(upcoming, then).items():
                spent[f"reference_{part}"] = spent.get(f"reference_{part}", 0.0) + seconds
        return {"references_ahead": round(time.monotonic() - began, 3), **spent}

    def _next_chunk(self) -> list[Job] | None:
        """The first chunk with a job ready to run, else the first (its lane then waits for a build)."""
        with self._lock:
            if self._failure is not None or not self._queue:
                return None
            return list(self._queue.pop(self._first_ready_chunk()))

    def _first_ready_chunk(self) -> int:
        """The index of the first queued chunk with a job ready to run, else 0; the caller holds the lock."""
        return next((i for i, chunk in enumerate(self._queue) if any(map(self._ready, chunk))), 0)

    def _guess_next(self, chunk: list[Job]) -> Job | None:
        """The job this lane will likely run next, for its worker's early start: from the lane's chunk, else from
        the chunk ``_next_chunk`` would give it now (the first job of each problem starts early too). Only a
        guess: another lane may take that chunk, and the early worker, which ran no solution code, is dropped."""
        if chunk:
            return self._pop_ready(list(chunk))
        with self._lock:
            upcoming = list(self._queue[self._first_ready_chunk()]) if self._queue and self._failure is None else []
        return self._pop_ready(upcoming) if upcoming else None

    def _pop_ready(self, chunk: list[Job]) -> Job:
        """Take the chunk's first job whose build has ended, else its first job."""
        index = next((i for i, job in enumerate(chunk) if self._ready(job)), 0)
        return chunk.pop(index)

    def _finish(
        self, result: JobResult, results: list[JobResult], running: bool = False, judging: bool = False
    ) -> None:
        with self._lock:
            self.progress.running -= int(running)
            self.progress.judging -= int(judging)
            self.progress.judged += 1
            self._on_result(result)  # recording (session's on_result) first: a result is only listed once kept
            results.append(result)


class _JudgingBeside:
    """A lane's judging of each job's outputs in a thread of its own while the lane's next job runs. One judgement
    at a time: before handing over the next, the lane waits for the last (``judge_wait``, on its critical path),
    so it never runs more than one job ahead and never holds more than one job's outputs in judgement."""

    def __init__(self, scheduler: Scheduler, results: list[JobResult]) -> None:
        self._scheduler, self._results = scheduler, results
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _JudgingBeside:
        return self

    def __exit__(self, *exc: object) -> None:
        self._wait()

    def hand_over(self, finish: Finish, lane_s: dict[str, float]) -> None:
        """``lane_s``: what the lane spent on the job before it started (``build_wait``, ``references_ahead``)."""
        with self._scheduler._lock:  # its workers have ended: it waits for its judgement now
            self._scheduler.progress.running -= 1
            self._scheduler.progress.judging += 1
        judge_wait = self._wait()
        self._thread = threading.Thread(target=self._judge, args=(finish, lane_s, judge_wait), daemon=True)
        self._thread.start()

    def _wait(self) -> float:
        began = time.monotonic()
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)  # a timed join: Ctrl-C still reaches the main thread
        return round(time.monotonic() - began, 3)

    def _judge(self, finish: Finish, lane_s: dict[str, float], judge_wait: float) -> None:
        scheduler = self._scheduler
        try:
            result = finish()
            _add_stages(result, lane_s)
            result.stage_s["judge_wait"] = judge_wait
            scheduler._finish(result, self._results, judging=True)
        except BaseException as exc:  # a result that cannot be recorded: every lane stops, run() raises it
            with scheduler._lock:
                scheduler._failure = scheduler._failure or exc


def _add_stages(result: JobResult, lane_s: dict[str, float]) -> None:
    """Add what the lane spent on a job before starting it to the job's own stages (a reference's phases may be
    in both: one run ahead for another job, the job's own when it ran it itself)."""
    for key, seconds in lane_s.items():
        result.stage_s[key] = round(result.stage_s.get(key, 0.0) + seconds, 3)
