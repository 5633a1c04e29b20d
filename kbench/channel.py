"""The private channel from a worker to the parent: JSON lines on a pipe the parent opened for it.

The worker's stdout and stderr go to a log file that is only ever shown to the user, so text a solution
prints (a forged result, say) never reaches the verdict.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kbench.spec import file_digest


class Channel:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, **message: Any) -> None:
        data = (json.dumps(message, default=str) + "\n").encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def phase(self, name: str) -> None:
        """Tell the parent which phase starts now; each phase has its own timeout."""
        self.send(phase=name)

    def announce(self, path: Path) -> None:
        """Name an output file just written, with its digest: a file changed afterwards no longer matches."""
        self.send(output=path.name, digest=file_digest(path))
