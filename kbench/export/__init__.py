"""Exports of a run's results, one module per format behind one interface (``base.Exporter``).

Adding a format: write ``kbench/export/<name>_format.py`` with an ``Exporter`` subclass, and add one line to
``EXPORTERS``. The registry names each class by its import path, and a format's module is imported only when
that format is asked for: HTML needs plotly, which a bare install (the GPU machine's ``pip install --no-deps``)
may lack, and nothing else should fail for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from kbench.export.base import ExportContext, Exporter
from kbench.results import JobResult

EXPORTERS: dict[str, str] = {
    "csv": "kbench.export.csv_format:CsvExporter",
    "json": "kbench.export.json_format:JsonExporter",
    "markdown": "kbench.export.markdown_format:MarkdownExporter",
    "html": "kbench.export.html_format:HtmlExporter",
    "junit": "kbench.export.junit_format:JunitExporter",
}


class UnknownFormat(KeyError):
    """A format name that is not in the registry."""


def get_exporter(name: str) -> Exporter:
    """The exporter registered under ``name``; ImportError when the format's own dependency is missing."""
    try:
        target = EXPORTERS[name]
    except KeyError:
        raise UnknownFormat(f"no export format '{name}' (known: {', '.join(sorted(EXPORTERS))})") from None
    module_name, _, class_name = target.partition(":")
    exporter_class = getattr(importlib.import_module(module_name), class_name)
    return exporter_class()


def write_export(name: str, results: Sequence[JobResult], context: ExportContext, path: Path) -> None:
    get_exporter(name).write(results, context, path)


__all__ = ["EXPORTERS", "ExportContext", "Exporter", "UnknownFormat", "get_exporter", "write_export"]
