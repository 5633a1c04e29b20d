"""Check a generated corpus against its manifest: run each solution beside its reference, outside kbench.

    python benchmarks/corpus/check.py --corpus DIR [--device cuda] [--jobs 16] [--timeout 600]
                                      [--only FILE ...] [--references] [--json OUT]

Each solution runs in a process of its own (a new process group, killed at the timeout). The problem's Model and
the solution's ModelNew are built under torch.manual_seed(0) and given the same inputs; the output is judged as
kbench judges it by default: |y - r64| <= max(1e-4 + 1e-4 |r64|, 4 E), with r64 the float64 evaluation and E
PyTorch fp32's own worst error. The observed outcome (correct, wrong, compile_error, load_error,
runtime_error, hang) is compared with the manifest's. On the CPU the problems' KBENCH_SMALL_SIZES apply and
only plain-PyTorch solutions run. ``--references`` also times every problem's reference alone (CUDA).

This checks the corpus; it is not a benchmark. Measuring kbench is what the corpus is for (README.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

OBSERVED_FOR = {"correct": "correct", "wrong": "wrong", "compile_error": "compile_error", "hang": "hang"}


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _median_ms(fn: Any, device: str, repeats: int = 20) -> float:
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def worker(problem_path: Path, solution_path: Path | None, device: str) -> dict[str, Any]:
    """Runs in the child process; returns what it saw."""
    import torch

    problem = _load(problem_path, "corpus_problem")
    if device == "cpu":
        for name, value in getattr(problem, "KBENCH_SMALL_SIZES", {}).items():
            setattr(problem, name, value)
    torch.manual_seed(0)
    model = problem.Model(*problem.get_init_inputs()).to(device)
    torch.manual_seed(1)
    inputs = [x.to(device) for x in problem.get_inputs()]
    result: dict[str, Any] = {}
    with torch.no_grad():
        ref = model(*inputs)
        result["ref_ms"] = _median_ms(lambda: model(*inputs), device)
        if solution_path is None:
            if device == "cuda":
                result["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            return result
        try:
            solution = _load(solution_path, "corpus_solution")
            torch.manual_seed(0)
            new = solution.ModelNew(*problem.get_init_inputs()).to(device)
        except Exception as exc:  # a failed build is a RuntimeError naming the extension
            built = "Error building extension" in str(exc)
            return {**result, "observed": "compile_error" if built else "load_error", "error": str(exc)[-400:]}
        try:
            out = new(*inputs)
            result["new_ms"] = _median_ms(lambda: new(*inputs), device)
        except Exception as exc:
            return {**result, "observed": "runtime_error", "error": str(exc)[-400:]}
        if device == "cuda":
            result["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        ref64 = model.double()(*[x.double() for x in inputs])
        if out.shape != ref.shape:
            return {**result, "observed": "wrong", "error": f"shape {tuple(out.shape)} != {tuple(ref.shape)}"}
        fp32_error = (ref.double() - ref64).abs().max()
        bound = torch.maximum(1e-4 + 1e-4 * ref64.abs(), 4 * fp32_error)
        ratio = ((out.double() - ref64).abs() / bound).nan_to_num(nan=float("inf")).max().item()
        result.update(observed="correct" if ratio <= 1 else "wrong", worst_over_bound=ratio)
    return result


def run_one(corpus: Path, problem: str, solution: str | None, device: str, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", str(corpus / problem), str(corpus / solution) if solution else "-"]
    cmd += ["--device", device]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"observed": "hang", "seconds": round(time.monotonic() - started, 1)}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"observed": "crash", "error": (stderr or stdout)[-400:], "returncode": proc.returncode}
    return {**json.loads(lines[-1]), "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per solution, build included")
    parser.add_argument("--only", nargs="*", help="solution files (as in the manifest) to check; default all")
    parser.add_argument("--references", action="store_true", help="also time every problem's reference alone")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        problem, solution = args.worker
        found = worker(Path(problem), None if solution == "-" else Path(solution), args.device)
        print(json.dumps(found))
        return 0
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    chosen = [s for s in manifest["solutions"] if args.only is None or s["file"] in set(args.only)]
    if args.device == "cpu":
        chosen = [s for s in chosen if s["kind"] == "pytorch"]
    jobs: list[tuple[dict[str, Any] | None, str, str | None]] = [(s, s["problem"], s["file"]) for s in chosen]
    first = {"hang": 0, "compile_error": 1}  # the longest first: the hang's timeout, then CUDA builds
    jobs.sort(key=lambda j: (first.get(j[0]["outcome"], 2), j[0]["kind"] != "cuda") if j[0] else (3, True))
    if args.references:
        jobs += [(None, p["file"], None) for p in manifest["problems"]]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, args.corpus, j[1], j[2], args.device, args.timeout) for j in jobs]
        for job, future in zip(jobs, as_completed_in_order(futures), strict=True):
            found = future.result()
            what = f"intended {job[0]['outcome']}, " if job[0] else ""
            print(f"{job[2] or job[1]}: {what}observed {found.get('observed', 'reference')} {found}", flush=True)
        results = [f.result() for f in futures]
    return report(jobs, results, args.json)


def as_completed_in_order(futures: list[Future]) -> Iterator[Future]:
    """The futures, each waited for in turn (a result is printed as soon as those before it are done)."""
    for f in futures:
        f.result()
        yield f


def report(jobs: list, results: list[dict[str, Any]], out: Path | None) -> int:
    rows, mismatches = [], 0
    pairs: Counter[tuple[str, str]] = Counter()
    for (entry, problem, solution), found in zip(jobs, results, strict=True):
        intended = {"intended": entry["outcome"]} if entry else {}
        rows.append({"problem": problem, "solution": solution, **intended, **found})
        if entry is None:
            continue
        pairs[(entry["outcome"], found["observed"])] += 1
        if OBSERVED_FOR[entry["outcome"]] != found["observed"]:
            mismatches += 1
            print(f"MISMATCH {solution}: intended {entry['outcome']}, observed {found['observed']}: {found}")
    for (intended, observed), n in sorted(pairs.items()):
        print(f"{intended:>14} -> {observed:<14} {n}")
    timed = [r for r in rows if "ref_ms" in r]
    if timed:
        ms = sorted(r["ref_ms"] for r in timed)
        print(f"reference ms: min {ms[0]:.3f}, median {ms[len(ms) // 2]:.3f}, max {ms[-1]:.3f}")
    peaks = [r["peak_gb"] for r in rows if "peak_gb" in r]
    if peaks:
        print(f"peak GPU memory per process: max {max(peaks):.2f} GB")
    print(f"{len([j for j in jobs if j[0]])} solutions checked, {mismatches} not as intended")
    if out:
        out.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
