"""Reference baseline timings (eager, and torch.compile), cached between runs in a ``JsonStore``.

Trusted side: only the parent reads and writes the cache. An entry is keyed by everything the numbers
depend on: the problem file's text, the sizes, the device's name, torch's version and the timing settings.
A warm ``bench --all`` therefore re-times no unchanged reference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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
