"""``kbench cache``: what kbench's caches hold, and clearing them."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from kbench import caches
from kbench.cli_options import JsonFlag
from kbench.commands.common import EXIT_INTERNAL, app, console, errors, examples, fail


def _age(mtime: float | None) -> str:
    if mtime is None:
        return "—"
    seconds = max(0.0, time.time() - mtime)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _size(size_bytes: int) -> str:
    size = float(size_bytes)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@app.command(
    "cache",
    epilog=examples("kbench cache", "kbench cache --json", "kbench cache --clear builds", "kbench cache --clear all"),
)
def cache_command(
    clear: Annotated[
        list[str] | None,
        typer.Option("--clear", help=f"Remove one kind of cache ({', '.join(caches.CACHE_KINDS)}) or all. Repeatable."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show what kbench's caches hold (builds, baselines, calibration, bytecode: count, size, age), or clear them.
    The folder (in the title) is $KBENCH_CACHE_DIR, else the platform's user cache folder."""
    kinds = list(caches.CACHE_KINDS) if clear and "all" in clear else list(dict.fromkeys(clear or []))
    unknown = [k for k in kinds if k not in caches.CACHE_KINDS]
    if unknown:
        raise fail(f"--clear takes {', '.join(caches.CACHE_KINDS)} or all, not {', '.join(unknown)}")
    if kinds:
        try:
            removed = caches.clear(kinds)
        except OSError as exc:
            raise fail(f"cannot clear the cache: {exc}", EXIT_INTERNAL) from None
        for path in removed:
            errors.print(f"removed {path}", highlight=False)
        if not removed:
            errors.print("nothing to clear", highlight=False)
    entries = caches.inventory()
    if as_json:
        document = [dict(vars(e), path=str(e.path), what=caches.CACHE_KINDS[e.kind][1]) for e in entries]
        sys.stdout.write(json.dumps({"root": str(caches.default_cache_root()), "caches": document}, indent=2) + "\n")
        return
    table = Table(title=f"kbench caches in {escape(str(caches.default_cache_root()))}")
    for column in ("cache", "items", "size", "newest", "oldest", "what"):
        table.add_column(column)
    for e in entries:
        what = caches.CACHE_KINDS[e.kind][1]
        table.add_row(e.kind, str(e.items), _size(e.size_bytes), _age(e.newest), _age(e.oldest), what)
    console.print(table)
