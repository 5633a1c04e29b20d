"""Reference baseline timings (eager, and torch.compile), cached between runs.

Trusted side: only the parent reads and writes the cache. An entry is keyed by everything the numbers
depend on: the problem file's text, the sizes, the device's name, torch's version and the timing settings.
A warm ``bench --all`` therefore re-times no unchanged reference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kbench.catalog import Problem


@dataclass
class Baseline:
    eager_ms: list[float]  # samples
    compile_ms: list[float]  # samples; empty when not measured
    compile_error: str | None = None


def baseline_key(problem: Problem, overrides: dict[str, Any], device_name: str, settings: dict[str, Any]) -> str:
    parts = [
        problem.path.read_text(encoding="utf-8", errors="replace"),
        json.dumps(overrides, sort_keys=True, default=str),
        device_name,
        torch.__version__,
        json.dumps(settings, sort_keys=True, default=str),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class BaselineCache:
    """A JSON file of baselines; unreadable or stale entries are simply measured again."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _entries(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Baseline | None:
        entry = self._entries().get(key)
        try:
            return Baseline(**entry) if isinstance(entry, dict) else None
        except TypeError:
            return None

    def put(self, key: str, baseline: Baseline) -> None:
        entries = self._entries()
        entries[key] = asdict(baseline)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(entries), encoding="utf-8")
        partial.replace(self.path)  # a killed run never leaves a torn cache
