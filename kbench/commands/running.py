"""The commands that run jobs: ``list`` (what there is to run), ``verify`` (a problem's solutions, no run recorded)
and ``bench`` (a recorded run, or the rest of one)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kbench import catalog
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
from kbench.commands.common import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    app,
    console,
    errors,
    examples,
    export,
    fail,
    gate_code,
    lanes_for,
    parse_overrides,
    print_json,
    resolve_device,
    settings,
)
from kbench.runs import RunDir, RunNotFound, find_run, new_run

if TYPE_CHECKING:  # annotations only; the commands import these when they run
    from kbench import session
    from kbench.gate import GateConfig
    from kbench.results import JobResult


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
    return code if checks is None else max(code, gate_code(checks))
