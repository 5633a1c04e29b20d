"""Terminal output: rich tables and the progress display. Presentation only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kbench.catalog import Problem, Solution
from kbench.gate import GateCheck
from kbench.results import JobResult, Verdict
from kbench.spread import Spread

VERDICT_STYLE = {
    Verdict.CORRECT: "green",
    Verdict.INCORRECT: "red",
    Verdict.REJECTED: "magenta",
}


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "—" if value is None else format(value, fmt)


def _speedup(r: JobResult) -> str:
    if r.speedup is None:
        return "—"
    interval = f" [{r.speedup_low:.3g}–{r.speedup_high:.3g}]" if r.speedup_low and r.speedup_high else ""
    return f"{r.speedup:.3g}x{interval}"


def results_table(results: list[JobResult], title: str = "kbench results") -> Table:
    table = Table(title=title)
    for column in (
        "problem",
        "solution",
        "verdict",
        "max abs err",
        "max rel err",
        "ref ms",
        "new ms",
        "speedup",
        "vs compile",
        "build s",
    ):
        is_name = column in ("problem", "solution", "verdict")
        table.add_column(column, justify="left" if is_name else "right", no_wrap=is_name)
    for r in results:
        style = VERDICT_STYLE.get(r.verdict, "yellow")
        verdict = f"[{style}]{r.verdict}[/]" + (f" [dim]({', '.join(r.flags)})[/]" if r.flags else "")
        table.add_row(
            escape(r.problem),
            escape(r.solution),
            verdict,
            _num(r.max_abs_error, ".2e"),
            _num(r.max_rel_error, ".2e"),
            _num(r.ref_ms),
            _num(r.new_ms),
            _speedup(r),
            _num(r.speedup_vs_compile, ".3g") + ("x" if r.speedup_vs_compile is not None else ""),
            _num(r.build_s, ".1f"),
        )
    return table


def job_line(result: JobResult, done: int, total: int) -> str:
    """One finished job on one line, for a log: where the progress bar is not shown, it is all that tells a
    reader of a long run (or of one cut off) how far it got."""
    r = result
    outcome = f"{r.verdict}" + (f" ({', '.join(r.flags)})" if r.flags else "")
    if r.verdict == Verdict.CORRECT:
        outcome += f", {_num(r.ref_ms)} -> {_num(r.new_ms)} ms, speedup {_speedup(r)}"
    elif r.reason:
        outcome += f": {r.reason.splitlines()[0]}"
    return f"[{done}/{total}] {r.problem} / {r.solution}: {outcome} ({r.wall_s:.1f} s)"


def print_details(console: Console, results: list[JobResult], kernels: bool = False) -> None:
    """Per job: why it did not pass (with the tail of its error text), flags, notes, the kernel census;
    per problem: warnings about the problem itself."""
    warned: set[tuple[str, str]] = set()
    for r in results:
        name = f"[bold]{escape(r.problem)} / {escape(r.solution)}[/]"
        if r.verdict != Verdict.CORRECT:
            console.print(f"{name}: {r.verdict}: {escape(r.reason)}")
            if r.detail and r.verdict in (
                Verdict.COMPILE_ERROR,
                Verdict.LOAD_ERROR,
                Verdict.RUNTIME_ERROR,
                Verdict.CRASH,
            ):
                tail = "\n".join(r.detail.strip().splitlines()[-15:])
                console.print(f"[dim]{escape(tail)}[/]")
        elif r.flags:
            console.print(f"{name}: correct, flagged: {', '.join(r.flags)}")
        if r.new_error_fp64 is not None and r.ref_error_fp64 is not None and (kernels or "precision_loss" in r.flags):
            console.print(f"{name}: error vs float64 {r.new_error_fp64:.2e} (PyTorch fp32: {r.ref_error_fp64:.2e})")
        if r.timing_fallback:
            console.print(f"{name}: [yellow]timed with {r.timing_mode}:[/] {escape(r.timing_fallback)}")
        for note in r.notes:
            console.print(f"{name}: [dim]{escape(note)}[/]")
        for warning in r.warnings:
            if (r.problem, warning) not in warned:  # problem warnings repeat for every solution: say them once
                warned.add((r.problem, warning))
                console.print(f"[yellow]{escape(r.problem)}: warning:[/] {escape(warning)}")
        if kernels and r.kernels:
            console.print(kernel_table(r))


def kernel_table(result: JobResult) -> Table:
    table = Table(title=f"kernels launched by one {escape(result.solution)} forward call")
    for column in ("kernel", "own", "calls", "device ms"):
        table.add_column(column, justify="right" if column in ("calls", "device ms") else "left")
    for k in result.kernels:
        table.add_row(
            escape(str(k.get("name", ""))[:90]),
            "yes" if k.get("own") else "",
            str(k.get("calls")),
            _num(k.get("device_ms")),
        )
    return table


def catalog_table(entries: list[tuple[Problem, list[Solution]]]) -> Table:
    table = Table(title="kbench problems")
    table.add_column("problem", no_wrap=True)
    table.add_column("solutions (devices)")
    table.add_column("small sizes (CPU)")
    for problem, solutions in entries:
        names = ", ".join(f"{s.name} ({'/'.join(s.devices)})" for s in solutions) or "[dim]none[/]"
        small = ", ".join(f"{k}={v}" for k, v in problem.small_sizes.items()) or "[dim]—[/]"
        table.add_row(escape(problem.name), names, escape(small))
    return table


def gate_table(checks: list[GateCheck]) -> Table:
    table = Table(title="kbench gate")
    for column in ("problem", "result", "solution", "speedup", "required", "reason"):
        table.add_column(column)
    for c in checks:
        table.add_row(
            escape(c.problem),
            "[green]pass[/]" if c.passed else "[red]FAIL[/]",
            escape(c.solution or "—"),
            _num(c.speedup, ".3g"),
            f"{c.required_speedup:g}x",
            escape(c.reason),
        )
    return table


def spread_table(found: list[Spread], bound: float) -> Table:
    table = Table(title=f"kbench compare: medians across runs (bound {bound:.2%})")
    columns = ("problem", "solution", "modes", "new ms", "spread", "ref ms beside", "spread", "speedup", "spread")
    for column in (*columns, "busy MHz"):
        table.add_column(column, justify="left" if column in ("problem", "solution", "modes") else "right")
    for s in found:
        style = "green" if s.within(bound) else "red"
        table.add_row(
            escape(s.problem),
            escape(s.solution),
            " / ".join(sorted(set(s.timing_modes))),
            " / ".join(f"{v:.4g}" for v in s.new_ms),
            f"[{style}]{s.new_spread:.2%}[/]",
            " / ".join(f"{v:.4g}" for v in s.ref_ms),
            f"{s.ref_spread:.2%}",
            " / ".join(f"{v:.3g}" for v in s.speedup),
            f"{s.speedup_spread:.2%}",
            " / ".join("—" if v is None else f"{v:.0f}" for v in s.busy_clock_mhz),
        )
    return table


@contextmanager
def job_progress(console: Console, total: int) -> Iterator[tuple[Progress, int]]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        yield progress, progress.add_task("starting", total=total)
