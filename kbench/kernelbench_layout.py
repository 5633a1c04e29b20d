"""KernelBench's own naming, so its folders run as they are, with nothing renamed or copied.

- A problem lives in a folder named ``level<L>`` and its file name starts with its number:
  ``KernelBench/level1/1_Square_matrix_multiplication_.py`` is level 1, problem 1.
- KernelBench's ``scripts/generate_samples.py`` writes each generated kernel straight into its run folder
  (``runs/<run_name>/``, no subfolders) as ``level_<L>_problem_<P>_sample_<S>_kernel.py``, next to prompts and
  a config file that are not kernels.

This module only reads names; the catalog decides which problem gets which file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Strict: a name that only looks like a generation (``problem_x``, a missing ``_kernel``) is not guessed at.
GENERATION_PATTERN = re.compile(r"level_(\d+)_problem_(\d+)_sample_(\d+)_kernel\.py")
GENERATION_FORMAT = "level_<L>_problem_<P>_sample_<S>_kernel.py"
_LEVEL_FOLDER = re.compile(r"level(\d+)")
_PROBLEM_STEM = re.compile(r"(\d+)_")


@dataclass(frozen=True, order=True)
class KernelBenchId:
    """A KernelBench problem's identity: its level and its number within the level."""

    level: int
    problem: int

    def __str__(self) -> str:
        return f"level {self.level} problem {self.problem}"


@dataclass(frozen=True)
class Generation:
    """One generated kernel file of a KernelBench run folder."""

    path: Path
    target: KernelBenchId
    sample: str  # the digits as written: ``sample_0`` and ``sample_00`` are two files, so two names

    @property
    def name(self) -> str:
        """The solution's name in tables and results: the sample tells one problem's generations apart."""
        return f"sample_{self.sample}"


def problem_identity(path: Path) -> KernelBenchId | None:
    """Level and number of a problem file in a ``level<L>`` folder whose name starts ``<P>_``; None otherwise.

    Only the file's own folder counts (it may sit at any depth): a problem elsewhere has no KernelBench
    identity, so no generation is ever mapped onto it by accident."""
    level = _LEVEL_FOLDER.fullmatch(path.parent.name)
    number = _PROBLEM_STEM.match(path.stem)
    if level is None or number is None:
        return None
    return KernelBenchId(int(level.group(1)), int(number.group(1)))


def parse_generation(path: Path) -> Generation | None:
    """The generation a file name stands for, or None when the name is not exactly KernelBench's."""
    match = GENERATION_PATTERN.fullmatch(path.name)
    if match is None:
        return None
    level, problem, sample = match.groups()
    return Generation(path=path, target=KernelBenchId(int(level), int(problem)), sample=sample)


def loose_python_files(folder: Path) -> list[Path]:
    """The ``*.py`` files directly in ``folder`` (not its subfolders: a KernelBench run folder is flat, and
    kbench's own per-problem folders below it are found by name). Names starting ``_`` or ``.`` are left out."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.py") if p.is_file() and not p.name.startswith(("_", ".")))
