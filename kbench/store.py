"""A small JSON file of keyed entries, written atomically: the caches kbench keeps between runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class JsonStore:
    """Entries by key; an unreadable file reads as empty (its entries are simply measured again)."""

    def __init__(self, path: Path) -> None:
        self.path = path

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
        entries = self.entries()
        entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(entries, indent=1), encoding="utf-8")
        partial.replace(self.path)  # a killed run never leaves a torn file
