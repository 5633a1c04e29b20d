"""UNTRUSTED build worker: imports a solution once, so that its ``load_inline`` compiles, and reports how it went.

It runs solution code, so it is isolated like the solution worker (``kbench.isolation``); the parent only learns
whether the import worked, and how long it took, from its channel. It runs with no GPU visible: compiling needs
none, and a build pool of many of these must never share the device with a job being timed. The parent points
``TORCH_EXTENSIONS_DIR`` at the solution's build-cache folder, the one its solution worker will use, so that the
job's own import later finds the extension built. With ``confined``, it writes nowhere but that folder (and
device files) from before the import on: see ``kbench.sandbox``.
Usage (by the parent only): ``python -m kbench.untrusted.build_worker confined|free SOLUTION CHANNEL_FD``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from kbench.channel import Channel
from kbench.untrusted.worker import _describe, _is_build_failure


def _confine(ext_dir: Path) -> Path:
    """Confine this process to its build folder; the compilers' temporary files go to a folder of their own in
    it, which the caller removes."""
    from kbench import sandbox

    scratch = Path(tempfile.mkdtemp(prefix="tmp-", dir=ext_dir))
    sandbox.confine_worker([ext_dir], scratch, ext_dir)
    return scratch


def main(mode: str, solution_path: str, fd: str) -> None:
    channel = Channel(int(fd), announce_outputs=False)  # the worker starts in the "load" phase
    scratch = None
    try:
        from kbench import execution  # torch's import: kbench's own time, not the build's

        if mode == "confined":
            scratch = _confine(Path(os.environ["TORCH_EXTENSIONS_DIR"]))
        channel.phase("build")
        started = time.perf_counter()
        execution.load_module(Path(solution_path), "kbench_solution")
        channel.send(built={"build_s": time.perf_counter() - started})
    except BaseException as exc:
        verdict = "compile_error" if _is_build_failure(exc) else "load_error"
        channel.send(error={"verdict": verdict, "reason": _describe(exc), "detail": traceback.format_exc()})
        sys.exit(1)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
