"""Run-level numbers the reports show: verdict counts, the geomean speedup, KernelBench's fast_p, and who/where/
when the run was (from ``metadata.json``)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from kbench.results import JobResult, Verdict


def timed_speedups(results: Sequence[JobResult]) -> list[float]:
    """Speedups of correct jobs. Only those count: an incorrect kernel's speed means nothing."""
    return [r.speedup for r in results if r.verdict == Verdict.CORRECT and r.speedup is not None and r.speedup > 0]


def geomean_speedup(results: Sequence[JobResult]) -> float | None:
    """Geometric mean of the correct jobs' speedups (the mean of ratios that treats 2x and 0.5x as opposites)."""
    speedups = timed_speedups(results)
    if not speedups:
        return None
    return math.exp(math.fsum(math.log(s) for s in speedups) / len(speedups))


def fast_p(results: Sequence[JobResult], p: float) -> float:
    """Share of all jobs that are correct and more than ``p`` times as fast as eager (KernelBench's fast_p;
    fast_0 is the share correct). Jobs that failed count in the denominator: failing must cost."""
    if not results:
        return 0.0
    return sum(1 for s in timed_speedups(results) if s > p) / len(results)


def fast_p_curve(results: Sequence[JobResult]) -> tuple[list[float], list[float]]:
    """fast_p for p from 0 to the largest speedup, as the corners of its step function: fast_p holds its value
    from one speedup to the next and drops at each (speedup > p is strict), so these points, drawn as steps
    (horizontal, then vertical), are the whole curve."""
    ps = [0.0, *sorted(set(timed_speedups(results)))]
    return ps, [fast_p(results, p) for p in ps]


def verdict_counts(results: Sequence[JobResult]) -> dict[str, int]:
    """Jobs per verdict, in the verdicts' own order, listing only verdicts that occur."""
    counts = Counter(r.verdict for r in results)
    return {str(v): counts[v] for v in Verdict if counts[v]}


def summary(results: Sequence[JobResult]) -> dict[str, Any]:
    speedups = timed_speedups(results)
    return {
        "jobs": len(results),
        "verdicts": verdict_counts(results),
        "correct": sum(1 for r in results if r.verdict == Verdict.CORRECT),
        "geomean_speedup": geomean_speedup(results),
        "max_speedup": max(speedups, default=None),
        "fast_0": fast_p(results, 0.0),
        "fast_1": fast_p(results, 1.0),
        "fast_2": fast_p(results, 2.0),
    }


def run_facts(run_id: str, metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """Label and value pairs naming the run: what ran where, on which code, when. Missing facts are left out
    (an old run, or one killed before its metadata was complete)."""
    facts = [("run", run_id)] if run_id else []
    gpus = metadata.get("gpus") or []
    if gpus and isinstance(gpus[0], dict):
        gpu = gpus[0]
        facts.append(("GPU", f"{gpu.get('name', '?')} (driver {gpu.get('driver', '?')})"))
    for label, key in (("device", "device"), ("host", "host"), ("CPU", "cpu"), ("torch", "torch")):
        if metadata.get(key):
            facts.append((label, str(metadata[key])))
    git = metadata.get("git")
    if isinstance(git, dict) and git.get("commit"):
        facts.append(("commit", str(git["commit"])[:12] + (" (uncommitted changes)" if git.get("dirty") else "")))
    if metadata.get("source_digest"):
        facts.append(("source digest", str(metadata["source_digest"])))
    for label, key in (("started", "started_at"), ("finished", "finished_at")):
        if metadata.get(key):
            facts.append((label, str(metadata[key])))
    return facts
