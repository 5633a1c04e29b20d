"""Where kbench keeps what outlives a run (built extensions, baselines, calibration), and Python bytecode.

Bytecode: where the installed torch keeps none beside its sources (installed without it and
``PYTHONDONTWRITEBYTECODE`` set, or a read-only install), every kbench process that imports torch would
compile its ~1000 modules again, seconds each time: the CLI once per command, and every worker. kbench then
keeps that bytecode under its cache folder instead. Imports no torch, so the CLI can decide before it loads
torch.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs


def default_cache_root() -> Path:
    """``KBENCH_CACHE_DIR`` where set, else the platform's user cache folder: ``$XDG_CACHE_HOME/kbench`` or
    ``~/.cache/kbench`` on Linux, ``~/Library/Caches/kbench`` on macOS, ``%LOCALAPPDATA%\\kbench\\Cache`` on
    Windows."""
    if os.environ.get("KBENCH_CACHE_DIR"):
        return Path(os.environ["KBENCH_CACHE_DIR"])
    return Path(platformdirs.user_cache_dir("kbench", appauthor=False))


def installed_without_bytecode() -> bool:
    """Whether torch's bytecode is missing beside its sources (found without importing torch)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return False
    source = Path(spec.origin)
    # Spelled out: importlib's cache_from_source would look under sys.pycache_prefix once this process set it.
    return not (source.parent / "__pycache__" / f"{source.stem}.{sys.implementation.cache_tag}.pyc").is_file()


def bytecode_env(env: dict[str, str], cache_root: Path | None = None) -> None:
    """Point a child process's bytecode at kbench's cache when the install keeps none (the user's own
    ``PYTHONPYCACHEPREFIX`` wins)."""
    if "PYTHONPYCACHEPREFIX" not in env and installed_without_bytecode():
        env["PYTHONPYCACHEPREFIX"] = str((cache_root or default_cache_root()) / "pycache")
        env.pop("PYTHONDONTWRITEBYTECODE", None)


def keep_bytecode_here() -> None:
    """The same for this process; call it before torch is imported."""
    if sys.pycache_prefix is None and installed_without_bytecode():
        sys.pycache_prefix = str(default_cache_root() / "pycache")
        sys.dont_write_bytecode = False


@dataclass(frozen=True)
class CacheEntry:
    """One kind of thing kbench keeps under its cache folder, as ``kbench cache`` shows it."""

    kind: str
    path: Path
    items: int  # builds, or files
    size_bytes: int
    newest: float | None  # modification times (seconds since the epoch); None when empty
    oldest: float | None


# kind -> (path under the cache root, what it is); what `kbench cache --clear KIND` removes.
CACHE_KINDS: dict[str, tuple[str, str]] = {
    "builds": ("extensions", "built C++/CUDA extensions, one folder per solution source and toolchain"),
    "baselines": ("baselines.json", "reference and torch.compile timings kept between runs"),
    "calibration": ("calibration.json", "this device's measured ceilings (kbench calibrate)"),
    "bytecode": ("pycache", "Python bytecode kept for a torch installed without it"),
}


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []


def inventory(root: Path | None = None) -> list[CacheEntry]:
    """What each kind of cache holds: how many items, how many bytes, and how old."""
    root = root or default_cache_root()
    entries = []
    for kind, (name, _) in CACHE_KINDS.items():
        path = root / name
        files = _files(path)
        stats = [f.stat() for f in files]
        times = [s.st_mtime for s in stats]
        items = sum(1 for p in path.iterdir() if p.is_dir()) if kind == "builds" and path.is_dir() else len(files)
        entries.append(
            CacheEntry(
                kind, path, items, sum(s.st_size for s in stats), max(times, default=None), min(times, default=None)
            )
        )
    return entries


def clear(kinds: list[str], root: Path | None = None) -> list[Path]:
    """Remove the named kinds of cache; the paths removed (a kind with nothing cached is skipped)."""
    root = root or default_cache_root()
    removed = []
    for kind in kinds:
        path = root / CACHE_KINDS[kind][0]
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed
