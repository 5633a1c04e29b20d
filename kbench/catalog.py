"""Find problems and their solutions without executing them.

The trusted parent reads problem and solution files only as text (``ast``): it never imports a solution.
A problem is a KernelBench-format file (``Model``, ``get_inputs``, ``get_init_inputs``, module-level size
constants). kbench-specific, optional module-level literals:

- problem ``KBENCH_SMALL_SIZES = {"batch_size": 8, ...}``: sizes used automatically on the CPU.
- solution ``KBENCH_DEVICES = ["cpu"]``: the devices a solution runs on. Without it, a solution that passes
  ``cuda_sources`` to ``load_inline`` is CUDA-only, one that builds only C++ is CPU-only, and a plain
  PyTorch ``ModelNew`` runs anywhere.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
PROBLEMS_DIR = PACKAGE_DIR / "problems"
SOLUTIONS_DIR = PACKAGE_DIR / "solutions"
DEVICES = ("cpu", "cuda")


class CatalogError(Exception):
    """A problem or solution that cannot be found or read; the message says what to do."""


@dataclass(frozen=True)
class Problem:
    name: str
    path: Path
    constants: dict[str, Any] = field(default_factory=dict)  # module-level literals (sizes)
    small_sizes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Solution:
    name: str
    path: Path
    devices: tuple[str, ...]


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror}") from None
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: not valid Python: {exc}") from None


def module_literals(tree: ast.Module) -> dict[str, Any]:
    """Top-level ``NAME = <literal>`` assignments (the sizes a KernelBench file declares)."""
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
    return found


def _top_level_names(tree: ast.Module) -> set[str]:
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}


def read_problem(path: Path, name: str | None = None) -> Problem:
    tree = _parse(path)
    missing = {"Model", "get_inputs", "get_init_inputs"} - _top_level_names(tree)
    if missing:
        raise CatalogError(
            f"{path}: not a KernelBench problem: missing {', '.join(sorted(missing))} "
            "(a problem defines class Model, get_inputs() and get_init_inputs())"
        )
    constants = module_literals(tree)
    small = constants.pop("KBENCH_SMALL_SIZES", {})
    if not isinstance(small, dict):
        raise CatalogError(f"{path}: KBENCH_SMALL_SIZES must be a dict of size constants")
    unknown = sorted(set(small) - set(constants))
    if unknown:  # a typo here would silently run the CPU job at full size
        raise CatalogError(f"{path}: KBENCH_SMALL_SIZES names {', '.join(unknown)}, which the file does not define")
    return Problem(name=name or path.stem, path=path.resolve(), constants=constants, small_sizes=small)


def _infer_devices(source: str) -> tuple[str, ...]:
    if "cuda_sources" in source:
        return ("cuda",)
    if "load_inline" in source or "cpp_extension" in source:
        return ("cpu",)
    return DEVICES


def read_solution(path: Path, name: str | None = None) -> Solution:
    if not path.is_file():
        raise CatalogError(f"solution file not found: {path}")
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read: {exc}") from None
    try:
        declared = module_literals(ast.parse(source)).get("KBENCH_DEVICES")
    except SyntaxError:
        declared = None  # still a solution: the worker reports the syntax error as its verdict
    if declared is not None:
        if isinstance(declared, str):
            declared = [declared]
        if not isinstance(declared, list | tuple) or not set(declared) <= set(DEVICES):
            raise CatalogError(f"{path}: KBENCH_DEVICES must list devices from {DEVICES}")
        devices = tuple(declared)
    else:
        devices = _infer_devices(source)
    return Solution(name=name or path.stem, path=path.resolve(), devices=devices)


@dataclass(frozen=True)
class Catalog:
    """Where problems (``<name>.py``) and their solutions (``<solutions_dir>/<name>/*.py``) live."""

    problems_dir: Path = PROBLEMS_DIR
    solutions_dir: Path = SOLUTIONS_DIR

    def list_problems(self) -> list[Problem]:
        if not self.problems_dir.is_dir():
            raise CatalogError(f"problems folder not found: {self.problems_dir}")
        return [read_problem(p) for p in sorted(self.problems_dir.glob("*.py")) if not p.name.startswith("_")]

    def resolve_problem(self, spec: str) -> Problem:
        """A problem by name (in ``problems_dir``) or by path to any KernelBench-format file."""
        as_path = Path(spec)
        if as_path.suffix == ".py" or as_path.exists():
            if not as_path.is_file():
                raise CatalogError(f"problem file not found: {spec}")
            return read_problem(as_path)
        candidate = self.problems_dir / f"{spec}.py"
        if candidate.is_file():
            return read_problem(candidate)
        names = [p.stem for p in self.problems_dir.glob("*.py") if not p.name.startswith("_")]
        close = difflib.get_close_matches(spec, names, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else " Run `kbench list` to see the problems."
        raise CatalogError(f"unknown problem '{spec}'.{hint}")

    def registered_solutions(self, problem: Problem) -> list[Solution]:
        folder = self.solutions_dir / problem.name
        if not folder.is_dir():
            return []
        return [read_solution(p) for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]


def parse_override(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` from ``--set``; VALUE is a Python literal (``8``, ``1e-3``, ``(3, 4)``) or a string."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise CatalogError(f"--set expects NAME=VALUE, got '{text}'")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    return name, value


def check_overrides(problem: Problem, overrides: dict[str, Any]) -> None:
    unknown = sorted(set(overrides) - set(problem.constants))
    if unknown:
        known = ", ".join(sorted(problem.constants)) or "none"
        raise CatalogError(
            f"{problem.path.name} has no module-level constant {', '.join(unknown)} (constants: {known})"
        )
