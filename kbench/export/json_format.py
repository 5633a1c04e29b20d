"""JSON: the results table for ``report --json``, and the documents the other commands print with ``--json``.

Numbers keep full precision (Python's shortest round-trip repr) and lists stay lists. JSON has no NaN or
Infinity: a non-finite number is written as null ("unknown"), as ``results.jsonl`` does.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbench.export.base import ExportContext, Exporter
from kbench.export.summary import summary
from kbench.gate import GateCheck
from kbench.results import JobResult
from kbench.spread import Spread

if TYPE_CHECKING:  # the session module pulls in the runner; these documents only read its dataclasses
    from kbench.catalog import Problem, Solution
    from kbench.session import ReferenceCheck


class JsonExporter(Exporter):
    name = "json"
    suffix = ".json"

    def render(self, results: Sequence[JobResult], context: ExportContext) -> str:
        from kbench.report import results_records  # pandas: loaded only where a table is wanted

        return dumps(results_records(list(results)))


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses and mappings as objects, paths and enums as strings,
    non-finite floats as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(document: Any) -> str:
    return json.dumps(plain(document), indent=2, allow_nan=False, default=str) + "\n"


def catalog_document(entries: Sequence[tuple[Problem, Sequence[Solution]]]) -> list[dict[str, Any]]:
    """``kbench list --json``: each problem with its file, small sizes and registered solutions."""
    return [
        {
            "problem": problem.name,
            "path": problem.path,
            "small_sizes": problem.small_sizes,
            "solutions": [{"name": s.name, "path": s.path, "devices": list(s.devices)} for s in solutions],
        }
        for problem, solutions in entries
    ]


def lint_document(checks: Sequence[ReferenceCheck]) -> list[dict[str, Any]]:
    """``kbench lint --json``: per problem, whether its reference ran and what makes it degenerate."""
    return [
        {
            "problem": c.problem,
            "ok": not c.error and not c.warnings,
            "error": c.error,
            "warnings": c.warnings,
            "ref_ms": c.ref_ms,
        }
        for c in checks
    ]


def gate_document(checks: Sequence[GateCheck]) -> dict[str, Any]:
    """``kbench gate --json``: the verdict (an empty gate fails, as its exit code does) and each check."""
    return {"passed": bool(checks) and all(c.passed for c in checks), "checks": list(checks)}


def compare_document(found: Sequence[Spread], within: float) -> dict[str, Any]:
    """``kbench compare --json``: each job's medians across the runs, their spreads, and the bound."""
    spreads = [
        {
            **dataclasses.asdict(s),
            "new_spread": s.new_spread,
            "ref_spread": s.ref_spread,
            "speedup_spread": s.speedup_spread,
            "within": s.within(within),
        }
        for s in found
    ]
    return {"within": within, "passed": bool(found) and all(s["within"] for s in spreads), "spreads": spreads}


def bench_document(
    context: ExportContext,
    path: Path,
    results: Sequence[JobResult],
    references: Sequence[ReferenceCheck],
) -> dict[str, Any]:
    """``kbench bench --json``: the run, every job in full (as ``results.jsonl`` has it), the references run
    for problems without a solution, the run's summary and throughput, and the gate when one was applied."""
    return {
        "run_id": context.run_id,
        "path": path,
        "device": context.metadata.get("device"),
        "summary": summary(results),
        "throughput": context.metadata.get("throughput"),
        "results": [r.to_dict() for r in results],
        "references": list(references),
        "gate": None if context.gate_checks is None else gate_document(context.gate_checks),
    }
