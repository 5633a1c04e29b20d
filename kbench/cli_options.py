"""Options that several ``kbench`` commands share, as typer annotations: one definition, one help text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DeviceOpt = Annotated[str, typer.Option("--device", help="cuda, cpu, or auto (cuda when available).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Run configuration YAML (default: built in).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a problem's module-level constant, e.g. --set batch_size=8. Repeatable."),
]
TimingModeOpt = Annotated[
    str | None,
    typer.Option(
        "--timing-mode",
        help="events (CUDA events per call), graph (CUDA-graph replays) or kernel (profiler kernel time); "
        "overrides timing.mode of the config. graph and kernel need CUDA.",
    ),
]
ResultsDirOpt = Annotated[Path, typer.Option("--results-dir", help="Folder holding run directories.")]
ProblemsDirOpt = Annotated[
    Path, typer.Option("--problems-dir", help="Folder of problem files (default: kbench's own).")
]
SolutionsDirOpt = Annotated[
    Path, typer.Option("--solutions-dir", help="Folder of <problem>/<solution>.py files (default: kbench's own).")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables.")]
JunitOpt = Annotated[
    Path | None,
    typer.Option(
        "--junit",
        help="Also write a JUnit XML report here, for CI: a testcase per job (and per gate check); "
        "failures and errors carry the verdict and reason.",
    ),
]
GpusOpt = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        help="The GPUs to run on, by NVML number: 0,2 or all (default: every visible GPU). Each runs one timed job "
        "at a time.",
    ),
]
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Spread the run over a Ray cluster: auto (the running cluster), local (start one here) or the head's "
        "ADDRESS. Needs pip install -e '.[ray]' and --device cuda or cpu.",
    ),
]
BuildJobsOpt = Annotated[
    int | None,
    typer.Option(
        "--build-jobs",
        min=1,
        help="Build the solutions' C++/CUDA extensions this many at a time on CPU workers, while the jobs whose "
        "builds are done run (default: the CPU cores, less two per GPU in use).",
    ),
]
