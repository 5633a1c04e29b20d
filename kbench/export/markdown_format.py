"""Markdown: the short table ``kbench report`` prints (``kbench.report.MARKDOWN_COLUMNS``)."""

from __future__ import annotations

from collections.abc import Sequence

from kbench.export.base import ExportContext, Exporter
from kbench.report import MARKDOWN_COLUMNS, results_frame
from kbench.results import JobResult


class MarkdownExporter(Exporter):
    name = "markdown"
    suffix = ".md"

    def render(self, results: Sequence[JobResult], context: ExportContext) -> str:
        frame = results_frame(list(results))
        return frame[MARKDOWN_COLUMNS].to_markdown(index=False, floatfmt=".4g") + "\n"
