"""Reference baseline timings (eager, and torch.compile), cached between runs in a ``JsonStore``.

Trusted side: only the parent reads and writes the cache. An entry is keyed by everything the numbers
depend on: the problem file's text, the sizes, the device's name, torch's version and the timing settings,
the timing mode among them (an events baseline is never reused for kernel timing). A warm ``bench --all``
therefore re-times no unchanged reference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from kbench.catalog import Problem


@dataclass
class Baseline:
    eager_ms: list[float]  # samples
    compile_ms: list[float]  # samples; empty when not measured
    compile_error: str | None = None
    timing_mode: str | None = None  # the mode actually used: the requested one, or events after a fallback
    compile_timing_mode: str | None = None
    timing_notes: list[str] = field(default_factory=list)  # why a timing fell back
    # Elements of the reference's first outputs: a warm run can start its first solution worker before the
    # reference has run again (solution_starts.py). None in entries written before it was kept.
    output_numel: int | None = None


def baseline_key(
    problem: Problem, overrides: dict[str, Any], device_name: str, timing: dict[str, Any], compile_mode: str | None
) -> str:
    """``timing`` is the configuration's timing section; its ``mode`` is a part of the key of its own."""
    parts = [
        problem.path.read_text(encoding="utf-8", errors="replace"),
        json.dumps(overrides, sort_keys=True, default=str),
        device_name,
        torch.__version__,
        str(timing["mode"]),
        json.dumps({"timing": timing, "compile": compile_mode}, sort_keys=True, default=str),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
