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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbench import kernelbench_layout
from kbench.kernelbench_layout import Generation, KernelBenchId

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
class UnmatchedGeneration:
    """A file at the top of the solutions folder that no problem takes, and why (for a warning)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Catalog:
    """Where problems (``<name>.py``) and their solutions live. A problem's solutions are the files in
    ``<solutions_dir>/<name>/`` and, for a problem of KernelBench's own folders (``level<L>/<P>_*.py``), the
    generations of a KernelBench run folder given as ``solutions_dir`` (``level_<L>_problem_<P>_sample_<S>_kernel.py``,
    directly in it), named ``sample_<S>``. kbench.kernelbench_layout has the naming rules."""

    problems_dir: Path = PROBLEMS_DIR
    solutions_dir: Path = SOLUTIONS_DIR

    def problem_files(self) -> list[Path]:
        """Every problem file under ``problems_dir``, subfolders included (names starting with ``_`` or ``.``
        are left out). A missing, unreadable or empty folder is an error: an empty table would hide the typo."""
        if not self.problems_dir.is_dir():
            raise CatalogError(f"problems folder not found: {self.problems_dir}")
        try:
            files = sorted(
                p
                for p in self.problems_dir.rglob("*.py")
                if not any(part.startswith(("_", ".")) for part in p.relative_to(self.problems_dir).parts)
            )
        except OSError as exc:
            raise CatalogError(f"cannot read the problems folder {self.problems_dir}: {exc.strerror}") from None
        if not files:
            raise CatalogError(f"no problem files (*.py) in {self.problems_dir} or its subfolders")
        return files

    def list_problems(self) -> list[Problem]:
        problems = [read_problem(p) for p in self.problem_files()]
        seen: dict[str, Path] = {}
        for problem in problems:  # solutions are found by name: two files of one name would share them
            if problem.name in seen:
                raise CatalogError(f"two problems named '{problem.name}': {seen[problem.name]} and {problem.path}")
            seen[problem.name] = problem.path
        return problems

    def resolve_problem(self, spec: str) -> Problem:
        """A problem by name (in ``problems_dir`` or its subfolders) or by path to any KernelBench-format file."""
        as_path = Path(spec)
        if as_path.suffix == ".py" or as_path.exists():
            if not as_path.is_file():
                raise CatalogError(f"problem file not found: {spec}")
            return read_problem(as_path)
        files = self.problem_files()
        matches = [p for p in files if p.stem == spec]
        if len(matches) == 1:
            return read_problem(matches[0])
        if matches:
            raise CatalogError(f"two problems named '{spec}': {', '.join(map(str, matches))}; pass the path")
        close = difflib.get_close_matches(spec, [p.stem for p in files], n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else " Run `kbench list` to see the problems."
        raise CatalogError(f"unknown problem '{spec}'.{hint}")

    def registered_solutions(self, problem: Problem) -> list[Solution]:
        """The files in ``<solutions_dir>/<problem.name>/``, then the KernelBench generations for the problem.
        Names are unique per problem: a generation whose ``sample_<S>`` is taken is named by its file stem."""
        folder = self.solutions_dir / problem.name
        own: list[Solution] = []
        if folder.is_dir():
            own = [read_solution(p) for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]
        generations = self._generations_for(problem)
        taken = Counter([s.name for s in own] + [g.name for g in generations])
        solutions = own + [read_solution(g.path, g.name if taken[g.name] == 1 else g.path.stem) for g in generations]
        _check_unique_names(problem, solutions)
        return solutions

    def generations(self) -> list[Generation]:
        """The KernelBench generation files directly in ``solutions_dir`` (a KernelBench run folder is flat;
        subfolders are not searched), whatever problem they name."""
        found = map(kernelbench_layout.parse_generation, kernelbench_layout.loose_python_files(self.solutions_dir))
        return [g for g in found if g is not None]

    def unmatched_generations(self) -> list[UnmatchedGeneration]:
        """Files directly in ``solutions_dir`` that no problem under ``problems_dir`` takes: generations naming a
        problem that is not there, and ``*.py`` files not named as KernelBench names generations. Without a
        warning about them, a typo or the wrong problems folder would just leave kernels out of the run."""
        known = self._kernelbench_problems()
        unmatched: list[UnmatchedGeneration] = []
        for path in kernelbench_layout.loose_python_files(self.solutions_dir):
            generation = kernelbench_layout.parse_generation(path)
            if generation is None:
                reason = f"not named {kernelbench_layout.GENERATION_FORMAT}, so it names no problem"
            elif generation.target not in known:
                reason = (
                    f"names {generation.target}, and no problem under {self.problems_dir} is "
                    f"level{generation.target.level}/{generation.target.problem}_*.py"
                )
            else:
                continue
            unmatched.append(UnmatchedGeneration(path.resolve(), reason))
        return unmatched

    def _kernelbench_problems(self) -> dict[KernelBenchId, list[Path]]:
        """Problem files under ``problems_dir`` by KernelBench identity (those without one are left out)."""
        found: dict[KernelBenchId, list[Path]] = {}
        for path in self.problem_files():
            identity = kernelbench_layout.problem_identity(path)
            if identity is not None:
                found.setdefault(identity, []).append(path.resolve())
        return found

    def _problems_of(self, identity: KernelBenchId) -> list[Path]:
        try:
            return self._kernelbench_problems().get(identity, [])
        except CatalogError:  # a problem given by path needs no problems folder: then it has no rival
            return []

    def _generations_for(self, problem: Problem) -> list[Generation]:
        identity = kernelbench_layout.problem_identity(problem.path)
        if identity is None:
            return []
        matching = [g for g in self.generations() if g.target == identity]
        if matching:  # only then does a second problem of the same identity make the mapping ambiguous
            others = [p for p in self._problems_of(identity) if p != problem.path]
            if others:
                raise CatalogError(
                    f"two problems are KernelBench {identity}: {problem.path} and {others[0]}; the generations "
                    f"named level_{identity.level}_problem_{identity.problem}_sample_<S>_kernel.py would fit "
                    "either: move one of them out of the problems folder"
                )
        return sorted(matching, key=lambda g: (int(g.sample), g.sample, g.path))


def _check_unique_names(problem: Problem, solutions: list[Solution]) -> None:
    """Results, resume and tables know a solution by (problem, name): two of one name would be one."""
    seen: dict[str, Path] = {}
    for solution in solutions:
        if solution.name in seen:
            raise CatalogError(
                f"two solutions of {problem.name} named '{solution.name}': {seen[solution.name]} and "
                f"{solution.path}; rename the one in {solution.path.parent}"
            )
        seen[solution.name] = solution.path


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


def _type_name(value: Any) -> str:
    return type(value).__name__


def _same_kind(value: Any, declared: Any) -> bool:
    """Whether ``--set`` may put ``value`` where the problem has ``declared``: the literal's own type, an int
    where a float stands, and any sequence where a tuple or list stands."""
    if isinstance(declared, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(declared, bool)
    if isinstance(declared, float):
        return isinstance(value, int | float)
    if isinstance(declared, list | tuple):
        return isinstance(value, list | tuple)
    return type(value) is type(declared) or declared is None


def check_overrides(problem: Problem, overrides: dict[str, Any]) -> None:
    """Every ``--set`` name is a constant of the problem and its value has the constant's type: checked from the
    file's text, before any worker starts, so ``--set batch_size=abc`` is a usage error and not a traceback."""
    unknown = sorted(set(overrides) - set(problem.constants))
    if unknown:
        known = ", ".join(sorted(problem.constants)) or "none"
        raise CatalogError(
            f"{problem.path.name} has no module-level constant {', '.join(unknown)} (constants: {known})"
        )
    for name, value in overrides.items():
        declared = problem.constants[name]
        if not _same_kind(value, declared):
            raise CatalogError(
                f"--set {name}={value!r}: {name} is {_type_name(declared)} in {problem.path.name} "
                f"({name} = {declared!r}), not {_type_name(value)}"
            )


def _binds_model_new(statements: list[ast.stmt]) -> bool:
    """A module-level binding of ``ModelNew`` (class, assignment, import), also inside if/try/with blocks;
    a star import could bind it too, so it counts."""
    for node in statements:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == "ModelNew":
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id == "ModelNew" for t in targets for n in ast.walk(t)):
                return True
        if isinstance(node, ast.Import | ast.ImportFrom) and any(
            alias.name == "*" or (alias.asname or alias.name) == "ModelNew" for alias in node.names
        ):
            return True
        if isinstance(node, ast.If | ast.Try | ast.With):  # module-level blocks, not function or class bodies
            blocks = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            blocks += [s for handler in getattr(node, "handlers", []) for s in handler.body]
            if _binds_model_new(blocks):
                return True
    return False


def check_defines_model_new(path: Path) -> None:
    """Fail at once, from the text, for a solution that defines no ``ModelNew`` (rather than after a worker
    has started and imported torch). A file that does not parse is left to the worker, whose ``load_error``
    shows the syntax error in context."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return
    if not _binds_model_new(tree.body):
        raise CatalogError(f"{path}: defines no ModelNew (a solution defines class ModelNew, replacing Model)")
