"""The interface every export format implements, and what a format may know about the run besides its jobs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kbench.gate import GateCheck
from kbench.results import JobResult


@dataclass(frozen=True)
class ExportContext:
    """The run around the results: its id and ``metadata.json`` (machine, commit, when), the gate checks when a
    gate was applied, and references that failed for problems no solution ran on (``bench`` fails on those)."""

    run_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    gate_checks: list[GateCheck] | None = None
    reference_errors: dict[str, str] = field(default_factory=dict)  # problem -> error


class Exporter(ABC):
    """One output format. ``render`` is pure (results in, file content out), so every format is tested
    without touching the disk; ``write`` is the same for all."""

    name: ClassVar[str]  # the registry key, e.g. "csv"
    suffix: ClassVar[str]  # the usual file name ending, e.g. ".csv"

    @abstractmethod
    def render(self, results: Sequence[JobResult], context: ExportContext) -> str | bytes:
        """The whole file's content."""

    def write(self, results: Sequence[JobResult], context: ExportContext, path: Path) -> None:
        content = self.render(results, context)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
