"""The ``kbench`` command line: parses arguments, calls the library, prints. Exit codes:

0 every verdict correct / the gate passed; 1 a verdict or the gate failed; 2 usage error or bad input (also:
nothing to run); 3 kbench itself failed (an internal error, or it could not write its results or caches).

Only light modules are imported here: torch, pandas and pydantic load inside the commands that need them, so
``--help``, ``--version``, ``list`` and ``cache`` answer at once.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kbench import __version__, caches, catalog
from kbench.catalog import CatalogError
from kbench.cli_options import (
    BuildJobsOpt,
    ConfigOpt,
    DeviceOpt,
    GpusOpt,
    JsonFlag,
    JunitOpt,
    ProblemsDirOpt,
    RayOpt,
    ResultsDirOpt,
    SetOpt,
    SolutionsDirOpt,
    TimingModeOpt,
)
from kbench.device_kind import on_gpu
from kbench.runs import RunDir, RunNotFound, find_run, new_run

if TYPE_CHECKING:  # annotations only; the commands import these when they run
    from kbench import session
    from kbench.config import KbenchConfig
    from kbench.devices import Device
    from kbench.export import ExportContext
    from kbench.gate import GateCheck, GateConfig
    from kbench.results import JobResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

app = typer.Typer(
    help="Verify and time custom kernels (ModelNew) against PyTorch reference problems.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text as written: the examples keep their lines
)
console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def examples(*lines: str) -> str:
    """A command's help ends with examples (as an epilog: click prints it after the options)."""
    # "\b" tells click to keep the paragraph's lines as they are rather than rewrap them into one.
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def _show_version(value: bool) -> None:
    if value:
        print(f"kbench {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback(
    epilog=examples(
        "kbench list",
        "kbench verify example_scale_bias_relu6",
        "kbench bench --all --gate configs/ci.yaml",
        "kbench cache",
    )
    + "\n\nExit codes: 0 all correct (or the gate passed), 1 a verdict or the gate failed, 2 usage error or "
    "nothing to run, 3 kbench itself failed."
)
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print kbench's version.")
    ] = False,
) -> None:
    """Verify and time custom kernels (ModelNew) against PyTorch reference problems."""


def main(argv: list[str] | None = None) -> None:
    """Run the command line. An exception that escapes a command is kbench's own failure, not a verdict on
    the solution: it exits 3 (with the traceback), so CI can tell the two apart."""
    try:
        app(args=argv, prog_name="kbench")
    except KeyboardInterrupt:
        errors.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # the one place every unexpected failure becomes exit 3
        traceback.print_exc()
        errors.print(f"[bold red]kbench failed:[/] {escape(f'{type(exc).__name__}: {exc}')}", highlight=False)
        errors.print("This is a failure of kbench or its environment, not a verdict on the solution.")
        sys.exit(EXIT_INTERNAL)


def resolve_device(requested: str) -> str:
    import torch  # here, not at the top: the commands that need no device start without torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in catalog.DEVICES:
        raise fail(f"--device must be cuda, cpu or auto, not '{requested}'")
    if requested == "cuda" and not torch.cuda.is_available():
        raise fail("--device cuda, but this torch sees no CUDA device (use --device cpu)")
    return requested


def lanes_for(device: str, gpus: str | None) -> list[Device]:
    """The devices a run's jobs go to (``--gpus``), checked before anything runs."""
    from kbench.devices import DeviceError, devices_for

    try:
        return devices_for(device, gpus)
    except DeviceError as exc:
        raise fail(str(exc)) from None


def settings(
    config: Path | None, device: str, timing_mode: str | None = None, on_this_host: bool = True
) -> tuple[KbenchConfig, str]:
    """The run's configuration and device, checked together: a timing mode the device cannot use is an error
    before anything runs. A device for other hosts (a Ray cluster's) is not looked for here."""
    from kbench.config import check_timing_mode, confines_workers, load_config

    cfg = load_config(config, timing_mode)
    dev = resolve_device(device) if on_this_host else device
    if dev not in catalog.DEVICES:
        raise fail(f"--device must be cuda, cpu or auto, not '{device}'")
    check_timing_mode(cfg, dev)
    if on_this_host:
        confines_workers(cfg)  # a sandbox asked for that this kernel cannot give: an error before anything runs
    return cfg, dev


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    return dict(catalog.parse_override(item) for item in items or [])


def print_json(document: Any) -> None:
    from kbench.export import json_format

    # Plain stdout, not rich: markup and wrapping would corrupt the document.
    sys.stdout.write(json_format.dumps(document))


def export(name: str, path: Path, results: list[JobResult], context: ExportContext) -> None:
    """Write one export format (kbench.export) to ``path``; a missing dependency or an unwritable path is a
    usage error that says so."""
    from kbench.export import write_export

    try:
        write_export(name, results, context, path)
    except ImportError as exc:
        raise fail(f"the {name} export needs the package '{exc.name}': pip install {exc.name}") from None
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror or exc}") from None


def nothing_to_run(planned: session.SessionPlan, device: str) -> typer.Exit | None:
    """Exit 2 when no solution runs on this device: a run that checks nothing must not pass CI as green."""
    if planned.jobs:
        return None
    names = ", ".join(p.name for p, _ in planned.reference_only) or "none"
    return fail(f"nothing to run: no solution for {device} in the selected problems ({names})")


def _exit_for(results: list[JobResult], references: list[session.ReferenceCheck]) -> int:
    from kbench.results import Verdict

    failed = any(r.verdict != Verdict.CORRECT for r in results) or any(ref.error for ref in references)
    return EXIT_FAILED if failed else EXIT_OK


def _print_references(references: list[session.ReferenceCheck], device: str) -> None:
    for ref in references:
        if ref.error:
            console.print(f"[red]reference of {ref.problem} failed:[/] {ref.error}", highlight=False)
        else:
            console.print(
                f"[dim]{ref.problem}: no solution for {device}; reference ran in {ref.ref_ms:.4g} ms[/]",
                highlight=False,
            )


@app.command("list", epilog=examples("kbench list", "kbench list --json", "kbench list --problems-dir my_problems"))
def list_command(
    problems_dir: ProblemsDirOpt = catalog.PROBLEMS_DIR,
    solutions_dir: SolutionsDirOpt = catalog.SOLUTIONS_DIR,
    as_json: JsonFlag = False,
) -> None:
    """List the problems and the solutions registered for each (--json: as JSON)."""
    registry = catalog.Catalog(problems_dir, solutions_dir)
    try:
        entries = [(p, registry.registered_solutions(p)) for p in registry.list_problems()]
    except CatalogError as exc:
        raise fail(str(exc)) from None
    if as_json:
        from kbench.export.json_format import catalog_document, dumps

        sys.stdout.write(dumps(catalog_document(entries)))
    else:
        from kbench.display import catalog_table

        console.print(catalog_table(entries))


@app.command(
    epilog=examples(
        "kbench verify example_scale_bias_relu6",
        "kbench verify path/to/problem.py -s my_solution.py --device cpu",
        "kbench verify example_scale_bias_relu6 --set batch_size=8 --json",
    )
)
def verify(
    problem: Annotated[str, typer.Argument(help="Problem name (kbench list) or path to a KernelBench file.")],
    solution: Annotated[
        list[Path] | None, typer.Option("--solution", "-s", help="Solution file (default: the registered ones).")
    ] = None,
    device: DeviceOpt = "auto",
    overrides: SetOpt = None,
    config: ConfigOpt = None,
    timing_mode: TimingModeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per job on stdout.")] = False,
    problems_dir: ProblemsDirOpt = catalog.PROBLEMS_DIR,
    solutions_dir: SolutionsDirOpt = catalog.SOLUTIONS_DIR,
    build_jobs: BuildJobsOpt = None,
    gpus: GpusOpt = None,
) -> None:
    """Check that solutions give the reference's answers, and time both. A --solution file that defines no
    ModelNew is a usage error (exit 2) at once, before any worker starts."""
    from kbench import display, run_progress, session
    from kbench.config import ConfigError

    registry = catalog.Catalog(problems_dir, solutions_dir)
    try:
        target = registry.resolve_problem(problem)
        sizes = parse_overrides(overrides)
        catalog.check_overrides(target, sizes)  # input first: it needs no torch
        for path in solution or []:
            catalog.read_solution(path)
            catalog.check_defines_model_new(path)
        cfg, dev = settings(config, device, timing_mode)
        if not solution and not [s for s in registry.registered_solutions(target) if dev in s.devices]:
            raise fail(f"no solution registered for {target.name} on {dev}; pass one with --solution PATH")
        planned = session.plan([target], dev, sizes, registry, solution)
        lanes = lanes_for(dev, gpus)
        outcome = run_progress.run_here(planned, dev, cfg, None, errors if as_json else console, lanes, build_jobs)
    except (CatalogError, ConfigError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        for result in outcome.results:
            print(json.dumps(result.to_dict(), default=str))
    else:
        console.print(display.results_table(outcome.results, title=f"kbench verify {target.name} ({dev})"))
        display.print_details(console, outcome.results, kernels=True)
    raise typer.Exit(_exit_for(outcome.results, outcome.references))


@app.command(
    epilog=examples(
        "kbench bench --all",
        "kbench bench example_scale_bias_relu6 --device cpu --junit kbench.xml",
        "kbench bench --all --gate configs/ci.yaml",
        "kbench bench --resume 20261121-130906-166e",
    )
)
def bench(
    problems: Annotated[list[str] | None, typer.Argument(help="Problems to run (names or paths).")] = None,
    run_all: Annotated[bool, typer.Option("--all", help="Run every problem under kbench/problems/.")] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Finish an interrupted run (id or directory); done jobs are kept.")
    ] = None,
    device: DeviceOpt = "auto",
    overrides: SetOpt = None,
    config: ConfigOpt = None,
    timing_mode: TimingModeOpt = None,
    results_dir: ResultsDirOpt = Path("results"),
    gate: Annotated[Path | None, typer.Option("--gate", help="Also apply this gate file to the run.")] = None,
    junit: JunitOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run as one JSON document on stdout (progress goes to stderr).")
    ] = False,
    problems_dir: ProblemsDirOpt = catalog.PROBLEMS_DIR,
    solutions_dir: SolutionsDirOpt = catalog.SOLUTIONS_DIR,
    build_jobs: BuildJobsOpt = None,
    gpus: GpusOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Verify and time every problem x solution; record the run under results/<run-id>/. --junit writes a JUnit
    XML report for CI; --json prints the run as JSON instead of tables."""
    from kbench import run_progress, session
    from kbench.config import ConfigError, check_timing_mode
    from kbench.gate import load_gate
    from kbench.ray_cluster import RayClusterError

    if resume is not None and (problems or run_all):
        raise fail("--resume takes no problem selection: the run's own is used")
    if resume is not None and timing_mode is not None:
        raise fail("--resume takes no --timing-mode: the run's own configuration is used")
    if resume is None and run_all == bool(problems):
        raise fail("name the problems to run, or pass --all (not both)")
    if ray_address is not None and ((device == "auto" and resume is None) or gpus is not None):
        raise fail("--ray needs --device cuda or cpu (the cluster's nodes have the GPUs, not this host), and no --gpus")
    try:
        gate_cfg = load_gate(gate) if gate else None
        if resume is not None:
            run_dir = find_run(results_dir, resume)
            resumption = session.plan_resume(run_dir)
            # A run resumes with its own configuration, on its own device.
            planned, cfg, dev = resumption.plan, resumption.config, resumption.device
            dev = dev if ray_address is not None else resolve_device(dev)  # Ray's nodes have the device
            lanes = [] if ray_address is not None else lanes_for(dev, gpus)
            check_timing_mode(cfg, dev)
            (errors if as_json else console).print(
                f"resuming {run_dir.run_id}: {resumption.done} jobs done, {len(planned.jobs)} to run"
            )
            recorder = session.Recorder.reopen(run_dir, sys.argv)
        else:
            registry = catalog.Catalog(problems_dir, solutions_dir)
            targets = registry.list_problems() if run_all else [registry.resolve_problem(p) for p in problems or []]
            if run_all:
                _warn_unmatched_generations(registry, errors if as_json else console)
            sizes = parse_overrides(overrides)
            for target in targets:  # input first: it needs no torch
                catalog.check_overrides(target, sizes)
            cfg, dev = settings(config, device, timing_mode, on_this_host=ray_address is None)
            planned = session.plan(targets, dev, sizes, registry)
            if (empty := nothing_to_run(planned, dev)) is not None:
                raise empty
            lanes = [] if ray_address is not None else lanes_for(dev, gpus)
            selection = session.Selection([str(t.path) for t in targets], sizes, str(problems_dir), str(solutions_dir))
            run_dir = new_run(results_dir)  # only once the plan is sound: bad input leaves no empty run behind
            recorder = session.Recorder(run_dir, dev, cfg, sys.argv, selection)
        out = errors if as_json else console
        if ray_address is not None:
            outcome = run_progress.run_on_ray(planned, dev, cfg, recorder, out, ray_address, run_dir.run_id)
        else:
            outcome = run_progress.run_here(planned, dev, cfg, recorder, out, lanes, build_jobs)
    except (CatalogError, ConfigError, RunNotFound, RayClusterError) as exc:
        raise fail(str(exc)) from None
    except session.RecordError as exc:  # kbench could not write its own results: not the solution's fault
        raise fail(str(exc), EXIT_INTERNAL) from None
    except OSError as exc:
        raise fail(f"cannot create a run under {results_dir}: {exc.strerror}", EXIT_INTERNAL) from None
    code = _finish_bench(run_dir, dev, outcome.references, gate_cfg, junit, as_json)
    # Jobs lost with a Ray node have no result: the run is not finished, whatever the others' verdicts.
    raise typer.Exit(max(code, EXIT_FAILED) if getattr(outcome, "lost", None) else code)


def _warn_unmatched_generations(registry: catalog.Catalog, out: Console) -> None:
    """Files in a KernelBench run folder that no problem takes would silently be left out of the run."""
    for stray in registry.unmatched_generations():
        out.print(f"[yellow]warning:[/] {escape(str(stray.path))} is not run: {escape(stray.reason)}", highlight=False)


def _finish_bench(
    run_dir: RunDir,
    device: str,
    references: list[session.ReferenceCheck],
    gate_cfg: GateConfig | None,
    junit: Path | None,
    as_json: bool,
) -> int:
    """Report a finished bench run (tables or JSON, and JUnit when asked); the exit code."""
    from kbench import display
    from kbench.export import ExportContext, json_format
    from kbench.gate import evaluate

    results = run_dir.results.read()  # the whole run: a resumed run's earlier jobs too
    checks = evaluate(results, gate_cfg) if gate_cfg is not None else None
    failed_refs = {ref.problem: ref.error for ref in references if ref.error}
    context = ExportContext(run_dir.run_id, run_dir.read_metadata(), checks, failed_refs)
    if junit:
        export("junit", junit, results, context)
    if as_json:
        print_json(json_format.bench_document(context, run_dir.path, results, references))
    else:
        console.print(display.results_table(results, title=f"kbench bench ({device}) — {run_dir.run_id}"))
        display.print_details(console, results)
        _print_references(references, device)
        console.print(f"results: {run_dir.path}", highlight=False)
        if context.metadata.get("throughput"):
            from kbench.throughput import line

            console.print(line(context.metadata["throughput"]), highlight=False)
        if checks is not None:
            console.print(display.gate_table(checks))
    code = _exit_for(results, references)
    return code if checks is None else max(code, _gate_code(checks))


@app.command(epilog=examples("kbench lint --all", "kbench lint example_scale_bias_relu6 --device cpu --json"))
def lint(
    problems: Annotated[list[str] | None, typer.Argument(help="Problems to check (names or paths).")] = None,
    run_all: Annotated[bool, typer.Option("--all", help="Check every problem.")] = False,
    device: DeviceOpt = "auto",
    overrides: SetOpt = None,
    config: ConfigOpt = None,
    problems_dir: ProblemsDirOpt = catalog.PROBLEMS_DIR,
    as_json: JsonFlag = False,
) -> None:
    """Warn about degenerate problems: outputs a constant or input-blind answer would match (--json: as JSON)."""
    from kbench import session
    from kbench.config import ConfigError
    from kbench.export import json_format

    if run_all == bool(problems):
        raise fail("name the problems to check, or pass --all (not both)")
    try:
        cfg, dev = settings(config, device)
        registry = catalog.Catalog(problems_dir)
        targets = registry.list_problems() if run_all else [registry.resolve_problem(p) for p in problems or []]
        checks = session.lint(targets, dev, cfg, parse_overrides(overrides))
    except (CatalogError, ConfigError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        print_json(json_format.lint_document(checks))
    for check in [] if as_json else checks:
        if check.error:
            console.print(f"[red]{check.problem}: reference failed:[/] {check.error}", highlight=False)
        for warning in check.warnings:
            console.print(f"[yellow]{check.problem}: degenerate:[/] {warning}", highlight=False)
        if not check.error and not check.warnings:
            console.print(f"[green]{check.problem}: ok[/]", highlight=False)
    raise typer.Exit(EXIT_FAILED if any(c.error or c.warnings for c in checks) else EXIT_OK)


@app.command(epilog=examples("kbench calibrate", "kbench calibrate --device cpu --json"))
def calibrate(
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ceilings as JSON.")] = False,
) -> None:
    """Measure this device's copy bandwidth and matrix-product rates; later runs report each solution's
    fraction of its roofline floor (roofline_fraction)."""
    from kbench import session
    from kbench.config import ConfigError

    try:
        cfg, dev = settings(config, device)
        ceilings = session.calibrate(dev, cfg)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(vars(ceilings)))
        return
    console.print(f"[bold]{ceilings.device_name}[/]: copy {ceilings.copy_gbs:.1f} GB/s (read + write)")
    for precision, rate in ceilings.gemm_tflops.items():
        console.print(f"  {precision} matrix product: {rate:.2f} TFLOP/s")
    if not on_gpu(dev):
        console.print("  events vs kernel timing: not available on the CPU (kernel timing needs CUDA)")
    for name, difference in ceilings.kernel_agreement.items():
        console.print(f"  events vs kernel timing, {name}: medians differ by {difference:.2%}")
    for note in ceilings.notes:
        console.print(f"  [yellow]{escape(note)}[/]", highlight=False)


def _gate_code(checks: list[GateCheck]) -> int:
    return EXIT_OK if checks and all(c.passed for c in checks) else EXIT_FAILED


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
    raise typer.Exit(_gate_code(checks))


def _age(mtime: float | None) -> str:
    if mtime is None:
        return "—"
    seconds = max(0.0, time.time() - mtime)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _size(size_bytes: int) -> str:
    size = float(size_bytes)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@app.command(
    "cache",
    epilog=examples("kbench cache", "kbench cache --json", "kbench cache --clear builds", "kbench cache --clear all"),
)
def cache_command(
    clear: Annotated[
        list[str] | None,
        typer.Option("--clear", help=f"Remove one kind of cache ({', '.join(caches.CACHE_KINDS)}) or all. Repeatable."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show what kbench's caches hold (builds, baselines, calibration, bytecode: count, size, age), or clear them.
    The folder (in the title) is $KBENCH_CACHE_DIR, else the platform's user cache folder."""
    kinds = list(caches.CACHE_KINDS) if clear and "all" in clear else list(dict.fromkeys(clear or []))
    unknown = [k for k in kinds if k not in caches.CACHE_KINDS]
    if unknown:
        raise fail(f"--clear takes {', '.join(caches.CACHE_KINDS)} or all, not {', '.join(unknown)}")
    if kinds:
        try:
            removed = caches.clear(kinds)
        except OSError as exc:
            raise fail(f"cannot clear the cache: {exc}", EXIT_INTERNAL) from None
        for path in removed:
            errors.print(f"removed {path}", highlight=False)
        if not removed:
            errors.print("nothing to clear", highlight=False)
    entries = caches.inventory()
    if as_json:
        document = [dict(vars(e), path=str(e.path), what=caches.CACHE_KINDS[e.kind][1]) for e in entries]
        sys.stdout.write(json.dumps({"root": str(caches.default_cache_root()), "caches": document}, indent=2) + "\n")
        return
    table = Table(title=f"kbench caches in {escape(str(caches.default_cache_root()))}")
    for column in ("cache", "items", "size", "newest", "oldest", "what"):
        table.add_column(column)
    for e in entries:
        what = caches.CACHE_KINDS[e.kind][1]
        table.add_row(e.kind, str(e.items), _size(e.size_bytes), _age(e.newest), _age(e.oldest), what)
    console.print(table)
