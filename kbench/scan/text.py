"""The text pass: comment masking, then the text rules over the file's lines and its string literals' values."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterable

from kbench.scan.findings import Findings
from kbench.scan.rules import TEXT_RULES, TextRule

_CPP_COMMENT = re.compile(r"//[^\n]*|/\*.*?(?:\*/|\Z)", re.DOTALL)
_PREPROCESSOR = re.compile(r"#\s*(?:include|define|undef|if|ifdef|ifndef|elif|else|endif|pragma|error)\b")


def _blank_cpp_comments(text: str) -> str:
    """Replace C++ comments with spaces, keeping newlines so that line numbers do not move."""
    return _CPP_COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)


def _overwrite(lines: list[str], start: tuple[int, int], text: str) -> None:
    """Write same-length text over the file's lines from a tokenize (row, col) position."""
    for i, piece in enumerate(text.split("\n")):
        row = start[0] - 1 + i
        col = start[1] if i == 0 else 0
        lines[row] = lines[row][:col] + piece + lines[row][col + len(piece) :]


def _is_line_comment(line: str) -> bool:
    stripped = line.lstrip()
    return stripped.startswith("//") or (stripped.startswith("#") and not _PREPROCESSOR.match(stripped))


def masked_lines(source: str) -> list[str]:
    """The file's lines with Python comments blanked, and C++ comments blanked inside string literals.

    `//` is only treated as a comment inside strings: in Python code it is floor division.
    """
    lines = source.split("\n")
    done = 0  # rows fully covered by tokens
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                _overwrite(lines, tok.start, " " * len(tok.string))
            elif tok.type == tokenize.STRING:
                _overwrite(lines, tok.start, _blank_cpp_comments(tok.string))
            done = tok.end[0]
    except (tokenize.TokenError, SyntaxError, ValueError):
        # Tokenizing stopped (e.g. an unterminated string): past that point only whole-line comments go.
        for i in range(done, len(lines)):
            if _is_line_comment(lines[i]):
                lines[i] = ""
    # No Python line starts with `//`, so such a line is C++ even where the tokenizer read it as `//` floor
    # division (C++ pasted into a file that does not parse).
    return ["" if line.lstrip().startswith("//") else line for line in lines]


def scan_text(findings: Findings, lines: list[str], rules: Iterable[TextRule]) -> None:
    for number, line in enumerate(lines, start=1):
        for rule in rules:
            if rule.pattern.search(line):
                findings.add(rule.flag, number, rule.why)


def scan_literal_values(findings: Findings, tree: ast.Module) -> None:
    """Scan decoded string values for what escapes or implicit concatenation hid from the text pass."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        first = node.lineno
        last = node.end_lineno or first
        value = _blank_cpp_comments(node.value)
        for rule in TEXT_RULES:
            if findings.has(rule.flag, first, last):
                continue  # the text pass already placed this flag exactly within this literal
            match = rule.pattern.search(value)
            if match:
                # Exact for real newlines in the literal; clamped because escaped "\n" are not file lines.
                findings.add(rule.flag, min(first + value.count("\n", 0, match.start()), last), rule.why)
