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
        raise RunNotFound(f"no runs under {root}/ yet: run `kbench bench` first, or name a run directory")
    return RunDir(runs[-1])
