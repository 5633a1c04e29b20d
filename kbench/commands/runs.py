"""The commands that read recorded runs: ``report`` (a run as tables and files), ``compare`` (the same jobs across
runs) and ``gate`` (a run held to a gate file, for CI)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kbench.cli_options import JsonFlag, JunitOpt, ResultsDirOpt
from kbench.commands.common import EXIT_FAILED, EXIT_OK, app, console, examples, export, fail, gate_code, print_json
from kbench.runs import RunNotFound, find_run


@app.command(
    "report",
    epilog=examples(
        "kbench report", "kbench report 20261121-130906-166e --csv out.csv", "kbench report --html report.html"
    ),
)
def report_command(
    run: Annotated[str | None, typer.Argument(help="Run id or directory (default: the newest run).")] = None,
    results_dir: ResultsDirOpt = Path("results"),
    csv: Annotated[Path | None, typer.Option("--csv", help="Write the table as CSV here.")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the table as JSON here (lists as lists, full precision).")
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Write a self-contained HTML page here (opens offline): verdicts, speedup per job with its 95 % "
            "interval, the fast_p curve, geomean, roofline fraction.",
        ),
    ] = None,
) -> None:
    """Print a run as a Markdown table; optionally write it as CSV, JSON or an HTML page with charts."""
    from kbench.export import ExportContext, get_exporter
    from kbench.runs import describe_run

    try:
        run_dir = find_run(results_dir, run)
        results = run_dir.results.read()
    except RunNotFound as exc:
        raise fail(str(exc)) from None
    context = ExportContext(run_dir.run_id, run_dir.read_metadata())
    for name, path in (("csv", csv), ("json", json_path), ("html", html)):
        if path:
            export(name, path, results, context)
    print(describe_run(run_dir.run_id, context.metadata) + "\n")  # the run, machine and commit the table is about
    print(get_exporter("markdown").render(results, context), end="")


@app.command("compare", epilog=examples("kbench compare RUN_A RUN_B", "kbench compare RUN_A RUN_B RUN_C --within 0.01"))
def compare_command(
    runs: Annotated[list[str], typer.Argument(help="Two or more run ids or directories.")],
    results_dir: ResultsDirOpt = Path("results"),
    within: Annotated[
        float,
        typer.Option("--within", min=0.0, help="Largest allowed spread of a solution's median, e.g. 0.005 for 0.5 %."),
    ] = 0.005,
    csv: Annotated[Path | None, typer.Option("--csv", help="Write the comparison as CSV here.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare the same jobs across runs (back to back, or timed in different modes): each median's spread.
    Exit 1 when a solution's median moved by more than --within."""
    from kbench import display, report, spread
    from kbench.export import json_format

    try:
        run_dirs = [find_run(results_dir, r) for r in runs]
        if len({run_dir.path.resolve() for run_dir in run_dirs}) != len(runs) or len(runs) < 2:
            raise fail("name at least two runs to compare, each once")
        found = spread.spreads({name: run_dir.results.read() for name, run_dir in zip(runs, run_dirs, strict=True)})
        if csv:
            report.write_csv(spread.spread_frame(found), csv)
    except RunNotFound as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write the comparison: {exc}") from None
    if as_json:
        print_json(json_format.compare_document(found, within))
    if not found:
        raise fail("no job was timed correct in two of these runs", EXIT_FAILED)
    if as_json:
        raise typer.Exit(EXIT_OK if all(s.within(within) for s in found) else EXIT_FAILED)
    console.print(display.spread_table(found, within))
    for s in found:
        name = f"{escape(s.problem)} / {escape(s.solution)}"
        if s.solution_changed:
            console.print(f"{name}: [yellow]the solution file differs between these runs[/]")
        if s.missing:
            console.print(f"{name}: not timed in {', '.join(s.missing)}")
        if s.throttled_in:
            console.print(f"{name}: NVML saw the GPU slowed (power or thermal) in {', '.join(s.throttled_in)}")
    raise typer.Exit(EXIT_OK if all(s.within(within) for s in found) else EXIT_FAILED)


@app.command("gate", epilog=examples("kbench gate", "kbench gate RUN --config configs/ci.yaml --junit gate.xml"))
def gate_command(
    run: Annotated[str | None, typer.Argument(help="Run id or directory (default: the newest run).")] = None,
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            help="Gate file (YAML). A relative path that is not found from the current folder is taken from "
            "kbench's project (the checkout it is installed from).",
        ),
    ] = Path("configs/ci.yaml"),
    results_dir: ResultsDirOpt = Path("results"),
    junit: JunitOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Exit 0 only if every problem in the run is correct and meets its minimum speedup. --junit writes a
    testcase per gate check for CI; --json prints the checks as JSON."""
    from kbench import display
    from kbench.config import ConfigError
    from kbench.export import ExportContext, json_format
    from kbench.gate import evaluate, load_gate
    from kbench.runs import describe_run

    try:
        gate_cfg = load_gate(config)  # a relative path missing here is looked up in kbench's project too
        run_dir = find_run(results_dir, run)
    except (ConfigError, RunNotFound) as exc:
        raise fail(str(exc)) from None
    metadata = run_dir.read_metadata()
    checks = evaluate(run_dir.results.read(), gate_cfg)
    # The run, machine and commit judged: on stderr when stdout carries the JSON document.
    print(describe_run(run_dir.run_id, metadata), file=sys.stderr if as_json else sys.stdout, flush=True)
    if junit:  # the gate's checks only: `bench --junit` reports the jobs themselves
        export("junit", junit, [], ExportContext(run_dir.run_id, metadata, checks))
    if as_json:
        print_json(json_format.gate_document(checks))
    else:
        console.print(display.gate_table(checks))
    raise typer.Exit(gate_code(checks))
