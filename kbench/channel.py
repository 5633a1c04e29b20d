"""The private channel from a worker to the parent: JSON lines on a pipe the parent opened for it.

The worker's stdout and stderr go to a log file that is only ever shown to the user, so text a solution
prints (a forged result, say) never reaches the verdict.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The parent sends this to a worker that ran out of time, just before killing it: the worker then writes
# every thread's Python stack to its log (faulthandler does so from C, even while the interpreter is stuck
# inside a CUDA call), and the timeout's detail says where it was.
STACKS_SIGNAL = signal.SIGUSR1


class Channel:
    def __init__(self, fd: int, announce_outputs: bool = True) -> None:
        self._fd = fd
        self._announce_outputs = announce_outputs
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
        """Mark the end of a step of the run phase (``kbench.isolation.RUN_STEPS``), for the throughput report."""
        self.send(step=name)

    def write_announced(self, path: Path, pieces: Sequence[bytes | memoryview]) -> None:
        """Write an output file from its pieces, then name it with the digest of what was written: a file changed
        afterwards no longer matches. The digest is of the bytes in hand, so the file is never read back."""
        sha, size = hashlib.sha256() if self._announce_outputs else None, 0
        with path.open("wb") as file:
            for piece in pieces:
                file.write(piece)
                if sha is not None:  # a file no solution can reach before it is read needs no digest
                    sha.update(piece)
                size += len(piece)
        if sha is not None:
            self.send(output=path.name, digest=sha.hexdigest(), size=size)


def wait_at_gate(gate_fd: str, channel: Channel) -> None:
    """Everything before this is kbench's own, CPU-only work; the parent may have started this worker early,
    while another job still runs, and says when the GPU is this job's."""
    channel.phase("wait")
    if not os.read(int(gate_fd), 2):
        sys.exit(0)  # the parent gave up on this job (the run ended first): nothing to report
