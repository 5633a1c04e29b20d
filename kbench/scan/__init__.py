"""A static scan of a solution's source: a second opinion for a human, never a verdict on its own.

Findings become flags next to a verdict; they never decide one. A regex or AST walk cannot prove a cheat
(code can be built at runtime), and an honest solution may use a flagged construct for a good reason, so
the scan aims to point a reviewer at the right lines with few false alarms on ordinary kernels.

Two passes:
- The text pass runs C++/CUDA patterns over the whole file with comments blanked out: Python `#` comments
  everywhere, and `//`/`/* */` comments inside string literals (where `load_inline` sources live). Working
  on the file's own lines keeps every line number exact, triple-quoted CUDA strings included. When the
  file parses, the decoded value of each string literal is scanned too, which sees through escapes and
  implicit concatenation (`"cudaStream" "Create"`).
- The AST pass (only for files that parse) resolves dotted names through the file's imports and aliases
  and checks Python-level constructs: streams, threads, patching, PyTorch fallbacks, lowered precision.
"""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

from kbench.scan.findings import (
    FLAGS,
    SNIPPET_CHARS,
    STATIC_MONKEY_PATCH,
    STATIC_PRECISION,
    STATIC_SIDE_STREAM,
    STATIC_THREAD,
    STATIC_TORCH_FALLBACK,
    Finding,
    Findings,
)
from kbench.scan.python import scan_tree
from kbench.scan.rules import PYTHON_TEXT_RULES, TEXT_RULES
from kbench.scan.text import masked_lines, scan_literal_values, scan_text

__all__ = [
    "FLAGS",
    "SNIPPET_CHARS",
    "STATIC_MONKEY_PATCH",
    "STATIC_PRECISION",
    "STATIC_SIDE_STREAM",
    "STATIC_THREAD",
    "STATIC_TORCH_FALLBACK",
    "Finding",
    "file_flags",
    "scan_source",
]


def scan_source(source: str) -> list[Finding]:
    """Never raises: a file that does not parse is scanned as text only."""
    # Python's tokenizer reads \r\n and \r as line ends; normalizing keeps our line numbers equal to its.
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    findings = Findings(source.split("\n"))
    try:
        tree: ast.Module | None = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tree = None
    # A scanner bug must never break a verdict: this is a second opinion, so keep whatever was found.
    with contextlib.suppress(Exception):
        masked = masked_lines(source)
        scan_text(findings, masked, TEXT_RULES)
        if tree is None:
            scan_text(findings, masked, PYTHON_TEXT_RULES)
        else:
            scan_literal_values(findings, tree)
            scan_tree(findings, tree)
    return findings.sorted()


def file_flags(solution: Path) -> list[str]:
    """The flags of a solution file's findings; none for a file that cannot be read (its worker says why)."""
    try:
        source = solution.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return sorted({finding.flag for finding in scan_source(source)})
