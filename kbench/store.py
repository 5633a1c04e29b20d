"""A small JSON file of keyed entries, shared by every kbench process: the caches kbench keeps between runs.
And the one atomic write that kbench's files go through."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

T = TypeVar("T")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old content or the new, never a torn file: written
    to a temporary file beside it, flushed to disk (fsync), then renamed over it. On any failure the temporary
    file is removed and ``path`` keeps what it held. The temporary name is unique, so writers running side by
    side never write into one another's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    # os.open rather than mkstemp: the file gets the usual permissions (0666 less the umask), not 0600.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


class JsonStore:
    """Entries by key; an unreadable file reads as empty (its entries are simply measured again).

    Several kbench processes may write one store at once (runs side by side, CI jobs sharing a cache): each
    ``put`` reads, changes and writes the file under an exclusive lock (``filelock``, on ``<file>.lock``), so
    none loses another's entry. Reads take no lock: every write replaces the file whole."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def entries(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, kind: type[T]) -> T | None:
        """The entry as a ``kind`` dataclass, or None when missing or no longer of that shape."""
        entry = self.entries().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            return kind(**entry)
        except TypeError:
            return None

    def put(self, key: str, value: Any) -> None:
        """Store a dataclass instance under ``key``."""
        entry = dataclasses.asdict(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The lock is released by the OS when its holder dies, so a killed kbench leaves no stale lock behind.
        with FileLock(self.lock_path):
            entries = self.entries()
            entries[key] = entry
            atomic_write_text(self.path, json.dumps(entries, indent=1))
