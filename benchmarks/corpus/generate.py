"""Generate a KernelBench-format corpus of problems and solutions for measuring kbench's throughput.

    python benchmarks/corpus/generate.py --out DIR [--seed N] [--problems 80] [--solutions 200]

Writes, under DIR (the three are replaced if present, nothing else is touched):

- problems/level1/<P>_<Name>.py, problems/level2/<P>_<Name>.py: KernelBench-format problems;
- solutions/level_<L>_problem_<P>_sample_<S>_kernel.py: one solution per file, several samples per problem;
- manifest.json: every problem and solution with its family, kind, intended outcome and the verdict kbench
  should give, plus counts.

The same seed and counts give byte-identical output. README.md (next to this file) describes the corpus.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from families import FAMILIES, Problem, build_problems, render_problem
from solutions import EXPECTED_VERDICT, KINDS, OUTCOMES, Planned, plan_solutions, render_solution

FORMAT_VERSION = 1


def problem_entry(problem: Problem) -> dict[str, Any]:
    return {
        "file": problem.path,
        "level": problem.level,
        "number": problem.number,
        "name": problem.stem,
        "family": problem.family,
        "constants": problem.constants,
    }


def solution_entry(plan: Planned, detail: str, extension: str | None) -> dict[str, Any]:
    entry = {
        "file": plan.file,
        "problem": plan.problem.path,
        "level": plan.problem.level,
        "problem_number": plan.problem.number,
        "sample": plan.sample,
        "family": plan.problem.family,
        "kind": plan.kind,
        "outcome": plan.outcome,
        "expected_verdict": EXPECTED_VERDICT[plan.outcome],
        "detail": detail,
    }
    if extension is not None:
        entry["extension"] = extension
    return entry


def counts(problems: list[Problem], solutions: list[dict[str, Any]]) -> dict[str, Any]:
    def tally(values: list[str], order: tuple[str, ...]) -> dict[str, int]:
        found = Counter(values)
        return {k: found[k] for k in order}

    return {
        "problems": len(problems),
        "solutions": len(solutions),
        "problems_by_level": {f"level{lv}": sum(p.level == lv for p in problems) for lv in (1, 2)},
        "problems_by_family": tally([p.family for p in problems], FAMILIES),
        "solutions_by_family": tally([s["family"] for s in solutions], FAMILIES),
        "solutions_by_kind": tally([s["kind"] for s in solutions], KINDS),
        "solutions_by_outcome": tally([s["outcome"] for s in solutions], OUTCOMES),
        "solutions_by_kind_and_outcome": {
            k: tally([s["outcome"] for s in solutions if s["kind"] == k], OUTCOMES) for k in KINDS
        },
    }


def build_corpus(seed: int, n_problems: int, n_solutions: int) -> tuple[dict[str, str], dict[str, Any]]:
    """Every file's text by relative path, and the manifest."""
    rng = random.Random(seed)
    problems = build_problems(rng, n_problems)
    plans = plan_solutions(rng, problems, n_solutions)
    files = {p.path: render_problem(p) for p in problems}
    entries: list[dict[str, Any]] = []
    compile_index = 0
    for plan in plans:
        rendered = render_solution(plan, random.Random(f"{seed}/{plan.file}"), compile_index)
        compile_index += plan.outcome == "compile_error"
        files[plan.file] = rendered.text
        entries.append(solution_entry(plan, rendered.detail, rendered.extension))
    manifest = {
        "generator": "benchmarks/corpus/generate.py",
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "layout": {
            "problems": "problems/level<L>/<P>_<Name>.py",
            "solutions": "solutions/level_<L>_problem_<P>_sample_<S>_kernel.py",
        },
        "expected_verdicts": EXPECTED_VERDICT,
        "counts": counts(problems, entries),
        "problems": [problem_entry(p) for p in problems],
        "solutions": entries,
    }
    return files, manifest


def write_corpus(out: Path, files: dict[str, str], manifest: dict[str, Any]) -> None:
    for old in ("problems", "solutions"):
        if (out / old).is_dir():
            shutil.rmtree(out / old)
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
    text = json.dumps(manifest, indent=2) + "\n"
    (out / "manifest.json").write_text(text, encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the corpus into")
    parser.add_argument("--seed", type=int, default=0, help="seed of every choice (default 0)")
    parser.add_argument("--problems", type=int, default=80, help="number of problems (default 80, at least 5)")
    parser.add_argument("--solutions", type=int, default=200, help="number of solutions (default 200)")
    args = parser.parse_args(argv)
    if args.problems < 5:
        parser.error("--problems must be at least 5 (one per family)")
    try:
        files, manifest = build_corpus(args.seed, args.problems, args.solutions)
    except ValueError as exc:
        parser.error(str(exc))
    write_corpus(args.out, files, manifest)
    c = manifest["counts"]
    print(f"wrote {c['problems']} problems and {c['solutions']} solutions to {args.out}")
    print(f"  kinds: {c['solutions_by_kind']}")
    print(f"  outcomes: {c['solutions_by_outcome']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
