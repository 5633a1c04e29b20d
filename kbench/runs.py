"""Run directories: ``results/<run-id>/`` with ``results.jsonl`` and ``metadata.json``."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbench.results import ResultsFile
from kbench.store import atomic_write_text

RESULTS_NAME = "results.jsonl"
METADATA_NAME = "metadata.json"


class RunNotFound(Exception):
    """No run where one was asked for; the message says where kbench looked."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def results(self) -> ResultsFile:
        return ResultsFile(self.path / RESULTS_NAME)

    def write_metadata(self, metadata: dict[str, Any]) -> None:
        # never leave a half-written metadata file behind
        atomic_write_text(self.path / METADATA_NAME, json.dumps(metadata, indent=2, default=str) + "\n")

    def read_metadata(self) -> dict[str, Any]:
        path = self.path / METADATA_NAME
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}


def new_run(root: Path) -> RunDir:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{secrets.token_hex(2)}"
    path.mkdir(parents=True, exist_ok=False)
    return RunDir(path)


def find_run(root: Path, run: str | None) -> RunDir:
    """A run by path, by id under ``root``, or the newest run under ``root`` when none is named."""
    if run is not None:
        for candidate in (Path(run), root / run):
            if (candidate / RESULTS_NAME).is_file():
                return RunDir(candidate)
        raise RunNotFound(f"no run '{run}' (looked for {Path(run) / RESULTS_NAME} and {root / run / RESULTS_NAME})")
    runs = sorted(p.parent for p in root.glob(f"*/{RESULTS_NAME}"))
    if not runs:
        where = root.absolute()
        why = "the folder holds no run" if root.is_dir() else "no such folder"
        raise RunNotFound(
            f"no runs under {where}/ ({why}): pass --results-dir with the folder that holds your run directories, "
            "name a run directory, or run `kbench bench` first"
        )
    return RunDir(runs[-1])


def describe_run(run_id: str, metadata: dict[str, Any]) -> str:
    """One line naming what a verdict or table is about: the run, when it finished, the machine, kbench's commit.

    Facts missing from ``metadata`` (an old run, one killed before it finished) are said to be missing rather
    than left out, so the line always has the same four parts."""
    finished = metadata.get("finished_at")
    if finished:
        when = f"finished {finished}"
    elif metadata.get("started_at"):
        when = f"started {metadata['started_at']}, not finished"
    else:
        when = "finish time unknown"
    gpus = metadata.get("gpus") or []
    if gpus and isinstance(gpus[0], dict) and gpus[0].get("name"):
        machine = f"GPU {gpus[0]['name']}" + (f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else "")
    elif metadata.get("cpu"):
        machine = f"CPU {metadata['cpu']}"
    else:
        machine = "machine unknown"
    if metadata.get("host"):
        machine += f" on {metadata['host']}"
    git = metadata.get("git")
    if isinstance(git, dict) and git.get("commit"):
        state = {True: "dirty", False: "clean"}.get(git.get("dirty"), "dirty state unknown")
        commit = f"kbench {str(git['commit'])[:12]} ({state})"
    elif metadata.get("source_digest"):
        commit = f"kbench commit unknown (source digest {str(metadata['source_digest'])[:12]})"
    else:
        commit = "kbench commit unknown"
    return f"run {run_id}, {when}, {machine}, {commit}"
