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
import sys
from pathlib import Path


def default_cache_root() -> Path:
    if os.environ.get("KBENCH_CACHE_DIR"):
        return Path(os.environ["KBENCH_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kbench"


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
