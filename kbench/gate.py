"""The CI gate: every problem correct and at least as fast as its threshold demands.

A problem passes when every one of its jobs in the run is ``correct`` and the best speedup among them
(or the named solution's) meets its ``min_speedup``. Problems listed in the gate file must be in the run;
problems in the run but not listed are held to ``default_min_speedup``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kbench.catalog import PACKAGE_DIR
from kbench.config import ConfigError, read_yaml, validation_message
from kbench.results import JobResult, Verdict


class ProblemGate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    min_speedup: float | None = Field(default=None, ge=0)
    solution: str | None = None  # judge only this solution's speedup (every solution must still be correct)


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    default_min_speedup: float = Field(default=1.0, ge=0)
    problems: dict[str, ProblemGate] = Field(default_factory=dict)


@dataclass
class GateCheck:
    problem: str
    passed: bool
    reason: str
    required_speedup: float
    speedup: float | None = None
    solution: str | None = None


def project_root(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The checkout that holds the installed kbench package (an editable install), or None where kbench is
    installed on its own (site-packages): only a checkout has ``configs/`` beside the package."""
    root = package_dir.parent
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "kbench"' in pyproject else None


def resolve_gate_file(path: Path, root: Path | None = None) -> Path:
    """The gate file ``path`` names: as given (from the current directory) where it exists, else a relative
    path taken from kbench's project root (``root``, by default the checkout kbench is installed from), so
    ``kbench gate --config configs/ci.yaml`` works from any folder. Neither: a ConfigError naming both paths."""
    if path.exists():
        return path
    root = project_root() if root is None else root
    tried = [path.absolute()]
    if not path.is_absolute() and root is not None:
        candidate = root / path
        if candidate.exists():
            return candidate
        tried.append(candidate)
    looked = " or ".join(str(p) for p in tried)
    hint = "pass --config with the path of a gate file (YAML)"
    if root is not None and (root / "configs" / "ci.yaml").is_file():
        hint += f", e.g. --config {root / 'configs' / 'ci.yaml'}"
    raise ConfigError(f"gate file {path} not found (looked for {looked}): {hint}")


def load_gate(path: Path) -> GateConfig:
    """The gate file at ``path`` (see resolve_gate_file for where a relative path is looked up)."""
    path = resolve_gate_file(path)
    data = read_yaml(path)
    try:
        return GateConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc)) from None


def _check_problem(name: str, jobs: list[JobResult], required: float, wanted: str | None) -> GateCheck:
    if not jobs:
        return GateCheck(name, False, "not in this run", required)
    failed = [job for job in jobs if job.verdict != Verdict.CORRECT]
    if failed:
        worst = failed[0]
        return GateCheck(
            name, False, f"{worst.solution}: {worst.verdict} ({worst.reason})", required, solution=worst.solution
        )
    candidates = [job for job in jobs if wanted is None or job.solution == wanted]
    if not candidates:
        return GateCheck(name, False, f"solution '{wanted}' not in this run", required)
    best = max(candidates, key=lambda job: job.speedup if job.speedup is not None else -1.0)
    if best.speedup is None:
        return GateCheck(name, False, "no speedup measured", required, solution=best.solution)
    if best.speedup < required:
        return GateCheck(
            name, False, f"speedup {best.speedup:.3g}x below {required:g}x", required, best.speedup, best.solution
        )
    return GateCheck(name, True, f"speedup {best.speedup:.3g}x >= {required:g}x", required, best.speedup, best.solution)


def evaluate(results: list[JobResult], gate: GateConfig) -> list[GateCheck]:
    by_problem: dict[str, list[JobResult]] = defaultdict(list)
    for result in results:
        by_problem[result.problem].append(result)
    checks = []
    for name in sorted(set(by_problem) | set(gate.problems)):
        rule = gate.problems.get(name, ProblemGate())
        required = rule.min_speedup if rule.min_speedup is not None else gate.default_min_speedup
        checks.append(_check_problem(name, by_problem.get(name, []), required, rule.solution))
    return checks
