"""The private channel from a worker to the parent: JSON lines on a pipe the parent opened for it.

The worker's stdout and stderr go to a log file that is only ever shown to the user, so text a solution
prints (a forged result, say) never reaches the verdict.
"""

from __future__ import annotations

import faulthandler
import json
import os
import queue
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from kbench.spec import segment_digest, segments, tree_digest

# The parent sends this to a worker that ran out of time, just before killing it: the worker then writes
# every thread's Python stack to its log (faulthandler does so from C, even while the interpreter is stuck
# inside a CUDA call), and the timeout's detail says where it was.
STACKS_SIGNAL = signal.SIGUSR1


HASH_THREADS = 4


class _Hashers:
    """Threads that hash an output file's segments side by side while it is written (``spec.SEGMENT_BYTES``).
    Started with the channel, the first thing a worker does, so that they are there before the solution worker's
    thread census takes its baseline and are never taken for the solution's."""

    def __init__(self, count: int) -> None:
        self._tasks: queue.SimpleQueue[tuple[list[memoryview], Future[bytes]]] = queue.SimpleQueue()
        for index in range(count):
            threading.Thread(target=self._serve, name=f"kbench-hash-{index}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            parts, done = self._tasks.get()
            try:
                done.set_result(segment_digest(parts))
            except BaseException as exc:  # the writer waits for every segment: never leave it waiting
                done.set_exception(exc)

    def submit(self, pieces: Sequence[bytes | memoryview]) -> list[Future[bytes]]:
        futures = []
        for parts in segments(pieces):
            future: Future[bytes] = Future()
            self._tasks.put((parts, future))
            futures.append(future)
        return futures


class Channel:
    def __init__(self, fd: int, announce_outputs: bool = True) -> None:
        self._fd = fd
        self._hashers = _Hashers(HASH_THREADS) if announce_outputs else None
        faulthandler.register(STACKS_SIGNAL, all_threads=True)  # every worker opens its channel first

    def send(self, **message: Any) -> None:
        data = (json.dumps(message, default=str) + "\n").encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def phase(self, name: str) -> None:
        """Tell the parent which phase starts now; each phase has its own timeout."""
        self.send(phase=name)

    def step(self, name: str) -> None:
        """Mark the end of a step of the phase (``kbench.isolation.RUN_STEPS``, ``REFERENCE_STEPS``), for the
        throughput report."""
        self.send(step=name)

    def write_announced(self, path: Path, pieces: Sequence[bytes | memoryview]) -> None:
        """Write an output file from its pieces, then name it with the digest of what was written: a file changed
        afterwards no longer matches. The digest is of the bytes in hand, hashed while they are written, so the file
        is never read back. A worker whose files no solution can reach before they are read announces nothing."""
        hashing = self._hashers.submit(pieces) if self._hashers is not None else None
        with path.open("wb") as file:
            for piece in pieces:
                file.write(piece)
        if hashing is not None:
            digest = tree_digest([segment.result() for segment in hashing])
            self.send(output=path.name, digest=digest, size=sum(len(piece) for piece in pieces))


def wait_at_gate(gate_fd: str, channel: Channel) -> None:
    """Everything before this is kbench's own, CPU-only work; the parent may have started this worker early,
    while another job still runs, and says when the GPU is this job's."""
    channel.phase("wait")
    if not os.read(int(gate_fd), 2):
        sys.exit(0)  # the parent gave up on this job (the run ended first): nothing to report
