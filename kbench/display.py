"""Terminal output: rich tables and the progress display. Presentation only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from kbench.catalog import Problem, Solution
from kbench.gate import GateCheck
from kbench.results import SPEED_CHANGED, JobResult, Verdict

if TYPE_CHECKING:
    from kbench.spread import Spread  # pandas: not loaded for `kbench list`

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


def _verdict(r: JobResult) -> Text:
    text = Text(str(r.verdict), style=VERDICT_STYLE.get(r.verdict, "yellow"))
    if r.flags:
        text.append(f" ({', '.join(r.flags)})", style="dim")
    return text


# The results table's figures: (header, the cell of one job, its label in the stacked form). Numbers are never
# cut: each column is exactly as wide as its widest figure, and where the console is too narrow for all of
# them, whole columns go (NUMBER_DROP_ORDER) or, where nothing may go, each job becomes a block of its own.
NUMBER_COLUMNS: tuple[tuple[str, Callable[[JobResult], str], str], ...] = (
    ("max abs err", lambda r: _num(r.max_abs_error, ".2e"), "max abs err"),
    ("max rel err", lambda r: _num(r.max_rel_error, ".2e"), "max rel err"),
    ("ref ms", lambda r: _num(r.ref_ms), "ref ms"),
    ("new ms", lambda r: _num(r.new_ms), "new ms"),
    ("speedup", _speedup, "speedup"),
    (
        "vs compile",
        lambda r: _num(r.speedup_vs_compile, ".3g") + ("x" if r.speedup_vs_compile is not None else ""),
        "vs compile",
    ),
    ("build s", lambda r: _num(r.build_s, ".1f"), "build s"),
)
# Least valuable first: how long the build took, the comparison with torch.compile, the relative error, the
# absolute error (a verdict other than correct says why), the reference's median (speedup = ref ms / new ms).
# Columns with no figure at all in any row go before these.
NUMBER_DROP_ORDER = ("build s", "vs compile", "max rel err", "max abs err", "ref ms")
# The figures of one job in the stacked form, most telling first.
STACKED_ORDER = ("speedup", "new ms", "ref ms", "vs compile", "max abs err", "max rel err", "build s")
# Narrowest a name column may be folded to (fewer characters: the column as wide as its widest name).
NAME_MIN_WIDTH = {"problem": 12, "solution": 10}


def _table_overhead(columns: int) -> int:
    """Characters a rich Table (default box, padding 1 each side) adds to its columns' content widths."""
    return 3 * columns + 1


def _spread(width: int, natural: list[int], least: list[int]) -> list[int] | None:
    """Content widths for columns that may fold: each at least its least, at most its natural width, more room
    handed out one character at a time in turn. None when even the least widths do not fit."""
    widths = [min(n, m) for n, m in zip(natural, least, strict=True)]
    room = width - sum(widths)
    if room < 0:
        return None
    while room > 0 and any(w < n for w, n in zip(widths, natural, strict=True)):
        for i, n in enumerate(natural):
            if room and widths[i] < n:
                widths[i] += 1
                room -= 1
    return widths


class ResultsTable:
    """The verify/bench results as a rich renderable that fits the width it is given without cutting a figure:
    the full table where it fits; in a terminal too narrow for it, the table without its least valuable number
    columns (the caption names them); otherwise, and always where output is not a terminal (a file, a CI log:
    nothing may go missing there), one block per job."""

    def __init__(self, results: list[JobResult], title: str) -> None:
        self.results = results
        self.title = title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        for dropped in self._drop_steps():
            if dropped and not console.is_terminal:
                break
            table = self._table(width, dropped)
            if table is not None:
                yield table
                return
        yield from self._stacked(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, options.max_width)

    def _cells(self) -> dict[str, list[str]]:
        return {header: [cell(r) for r in self.results] for header, cell, _ in NUMBER_COLUMNS}

    def _drop_steps(self) -> Iterator[list[str]]:
        cells = self._cells()
        empty = [h for h, _, _ in NUMBER_COLUMNS if all(c == "—" for c in cells[h])]
        order = [h for h in NUMBER_DROP_ORDER if h in empty]
        order += [h for h, _, _ in NUMBER_COLUMNS if h in empty and h not in order]
        order += [h for h in NUMBER_DROP_ORDER if h not in order]
        for i in range(len(order) + 1):
            yield order[:i]

    def _table(self, width: int, dropped: list[str]) -> Table | None:
        cells = self._cells()
        numbers = [(h, cells[h]) for h, _, _ in NUMBER_COLUMNS if h not in dropped]
        number_widths = [max([cell_len(c) for c in column] + [max(len(w) for w in h.split())]) for h, column in numbers]
        verdicts = [_verdict(r) for r in self.results]
        natural = [
            max([cell_len(r.problem) for r in self.results] + [len("problem")]),
            max([cell_len(r.solution) for r in self.results] + [len("solution")]),
            max([v.cell_len for v in verdicts] + [len("verdict")]),
        ]
        least = [
            NAME_MIN_WIDTH["problem"],
            NAME_MIN_WIDTH["solution"],
            max([cell_len(word) for v in verdicts for word in v.plain.split()] + [len("verdict")]),  # flags whole
        ]
        room = width - sum(number_widths) - _table_overhead(3 + len(numbers))
        name_widths = _spread(room, natural, least)
        if name_widths is None:
            return None
        table = Table(title=self.title)
        for header, w in zip(("problem", "solution", "verdict"), name_widths, strict=True):
            table.add_column(header, width=w, overflow="fold")
        for (header, _), w in zip(numbers, number_widths, strict=True):
            table.add_column(Text(header, justify="right", no_wrap=False), justify="right", width=w, no_wrap=True)
        for i, r in enumerate(self.results):
            table.add_row(
                Text(r.problem, overflow="fold"),
                Text(r.solution, overflow="fold"),
                verdicts[i],
                *(column[i] for _, column in numbers),
            )
        if dropped:
            table.caption = f"not shown at {width} columns: {', '.join(dropped)} (a wider terminal shows them)"
        return table

    def _stacked(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.title, style="bold italic")
        for r in self.results:
            yield Text.assemble((f"{r.problem} / {r.solution}", "bold"), ": ", _verdict(r), overflow="fold")
            figures = {label: cell(r) for _, cell, label in NUMBER_COLUMNS}
            shown = [f"{label} {figures[label]}" for label in STACKED_ORDER if figures[label] != "—"]
            if shown:  # indented, wrapped lines, not padded out to the width (a log keeps no trailing blanks)
                text = Text("   ".join(shown), overflow="fold")
                for line in text.wrap(console, max(options.max_width - 2, 1)):
                    line.rstrip()
                    yield Text.assemble("  ", line)


def results_table(results: list[JobResult], title: str = "kbench results") -> ResultsTable:
    """The verify/bench results, laid out for the width they are printed at (see ResultsTable)."""
    return ResultsTable(results, title)


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
    then the warnings, each said once (print_warnings)."""
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
        if kernels and r.kernels:
            console.print(kernel_table(r))
    print_warnings(console, results)


# Warnings about a job's timing, by a phrase in their text (kbench.timing_verdict, kbench.monitor),
# and what a run's summary says about the jobs that have one: once per run, not once per job.
RUN_WARNINGS = (
    (
        SPEED_CHANGED,
        "the device's speed changed while they were timed, so their medians depend on how long they were timed",
    ),
    ("GPU slowed during the job", "the GPU slowed (power or thermal limit) while they ran"),
    ("other processes used the GPU", "other processes used the GPU while they ran"),
)


def _run_warning(warning: str) -> str | None:
    return next((summary for found, summary in RUN_WARNINGS if found in warning), None)


def print_warnings(console: Console, results: list[JobResult]) -> None:
    """Each warning once: a problem's own (degenerate outputs) once per problem, not for each of its solutions;
    those about the timing of jobs (the device's speed changed, throttling, other processes) as one line per
    kind for the whole run, with a job's own text only where one job has it. The full text of every warning
    stays in each job's record (results.jsonl, --json)."""
    warned: set[tuple[str, str]] = set()
    by_kind: dict[str, list[JobResult]] = {}
    for r in results:
        for warning in r.warnings:
            summary = _run_warning(warning)
            if summary is not None:
                jobs = by_kind.setdefault(summary, [])
                if not jobs or jobs[-1] is not r:
                    jobs.append(r)
            elif (r.problem, warning) not in warned:
                warned.add((r.problem, warning))
                console.print(f"[yellow]{escape(r.problem)}: warning:[/] {escape(warning)}")
    for summary, jobs in by_kind.items():
        if len(jobs) == 1:
            r = jobs[0]
            for warning in dict.fromkeys(w for w in r.warnings if _run_warning(w) == summary):
                console.print(f"[yellow]{escape(r.problem)} / {escape(r.solution)}: warning:[/] {escape(warning)}")
        else:
            console.print(
                f"[yellow]warning:[/] {len(jobs)} of {len(results)} jobs: {summary} "
                "(each job's detail: its warnings in results.jsonl, or --json)"
            )


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


class _Fitted:
    """A renderable built for the width it is printed at: build(width) gives the table for that width."""

    def __init__(self, build: Callable[[int], Table]) -> None:
        self.build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.build(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, options.max_width)


def catalog_table(entries: list[tuple[Problem, list[Solution]]]) -> _Fitted:
    """One problem a row; its solutions and its small sizes one to a line, so that a size is never split."""
    rows = [
        (
            problem.name,
            [f"{s.name} ({'/'.join(s.devices)})" for s in solutions],
            [f"{k}={v}" for k, v in problem.small_sizes.items()],
        )
        for problem, solutions in entries
    ]
    headers = ("problem", "solutions (devices)", "small sizes (CPU)")
    natural = [
        max([cell_len(name) for name, _, _ in rows] + [len(headers[0])]),
        max([cell_len(item) for _, items, _ in rows for item in items] + [len("solutions")]),
        max([cell_len(item) for _, _, items in rows for item in items] + [len("small sizes")]),
    ]

    def build(width: int) -> Table:
        room = width - _table_overhead(3)
        widths = _spread(room, natural, [NAME_MIN_WIDTH["problem"], natural[1], natural[2]])
        widths = widths or _spread(room, natural, [NAME_MIN_WIDTH["problem"], 10, 10])
        table = Table(title="kbench problems")
        for i, header in enumerate(headers):
            table.add_column(header, width=widths[i] if widths else None, overflow="fold")
        for name, solutions, sizes in rows:
            table.add_row(
                Text(name, overflow="fold"),
                Text("\n".join(solutions), overflow="fold") if solutions else Text("none", style="dim"),
                Text("\n".join(sizes), overflow="fold") if sizes else Text("—", style="dim"),
            )
        return table

    return _Fitted(build)


def gate_table(checks: list[GateCheck]) -> _Fitted:
    """The gate's checks; figures whole, the names and the reason folded into the room left."""
    rows = [
        (
            c.problem,
            Text("pass", style="green") if c.passed else Text("FAIL", style="red"),
            c.solution or "—",
            _num(c.speedup, ".3g"),
            f"{c.required_speedup:g}x",
            c.reason,
        )
        for c in checks
    ]
    figures = [
        max([cell_len(row[3]) for row in rows] + [len("speedup")]),
        max([cell_len(row[4]) for row in rows] + [len("required")]),
    ]
    natural = [
        max([cell_len(row[0]) for row in rows] + [len("problem")]),
        max([cell_len(row[2]) for row in rows] + [len("solution")]),
        max([cell_len(row[5]) for row in rows] + [len("reason")]),
    ]

    def build(width: int) -> Table:
        room = width - sum(figures) - len("result") - _table_overhead(6)
        widths = _spread(room, natural, [NAME_MIN_WIDTH["problem"], NAME_MIN_WIDTH["solution"], 12])
        problem_w, solution_w, reason_w = widths or (None, None, None)
        table = Table(title="kbench gate")
        table.add_column("problem", width=problem_w, overflow="fold")
        table.add_column("result", no_wrap=True)
        table.add_column("solution", width=solution_w, overflow="fold")
        table.add_column("speedup", justify="right", no_wrap=True, min_width=figures[0])
        table.add_column("required", justify="right", no_wrap=True, min_width=figures[1])
        table.add_column("reason", width=reason_w, overflow="fold")
        for problem, result, solution, speedup, required, reason in rows:
            table.add_row(
                Text(problem, overflow="fold"),
                result,
                Text(solution, overflow="fold"),
                speedup,
                required,
                Text(reason, overflow="fold"),
            )
        return table

    return _Fitted(build)


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
