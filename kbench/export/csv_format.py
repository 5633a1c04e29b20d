"""CSV: the flat table (``kbench.report.COLUMNS``), lists joined with ';' so each job is one row."""

from __future__ import annotations

from collections.abc import Sequence

from kbench.export.base import ExportContext, Exporter
from kbench.report import results_frame
from kbench.results import JobResult


class CsvExporter(Exporter):
    name = "csv"
    suffix = ".csv"

    def render(self, results: Sequence[JobResult], context: ExportContext) -> str:
        return results_frame(list(results)).to_csv(index=False)
