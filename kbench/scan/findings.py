"""The flags a scan can raise, and the findings that carry them to a reviewer."""

from __future__ import annotations

from dataclasses import dataclass, field

STATIC_SIDE_STREAM = "static_side_stream"
STATIC_THREAD = "static_thread"
STATIC_MONKEY_PATCH = "static_monkey_patch"
STATIC_TORCH_FALLBACK = "static_torch_fallback"
STATIC_PRECISION = "static_precision"
FLAGS = (STATIC_SIDE_STREAM, STATIC_THREAD, STATIC_MONKEY_PATCH, STATIC_TORCH_FALLBACK, STATIC_PRECISION)

SNIPPET_CHARS = 120


@dataclass(frozen=True)
class Finding:
    flag: str  # one of FLAGS
    line: int  # 1-based line in the solution file
    snippet: str  # the offending line, stripped, at most SNIPPET_CHARS characters
    why: str  # one short sentence


@dataclass
class Findings:
    """Collects findings, one per (flag, line), with snippets taken from the original lines."""

    lines: list[str]
    found: dict[tuple[str, int], Finding] = field(default_factory=dict)

    def add(self, flag: str, line: int, why: str) -> None:
        if (flag, line) not in self.found:
            self.found[(flag, line)] = Finding(flag, line, self.snippet(line), why)

    def snippet(self, line: int) -> str:
        return self.lines[line - 1].strip()[:SNIPPET_CHARS] if 1 <= line <= len(self.lines) else ""

    def has(self, flag: str, first: int, last: int) -> bool:
        return any((flag, line) in self.found for line in range(first, last + 1))

    def sorted(self) -> list[Finding]:
        return sorted(self.found.values(), key=lambda f: (f.line, f.flag))
