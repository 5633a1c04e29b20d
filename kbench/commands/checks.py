"""The commands that look at the problems and the device rather than at solutions: ``lint`` (degenerate problems)
and ``calibrate`` (the roofline's ceilings)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from kbench import catalog
from kbench.catalog import CatalogError
from kbench.cli_options import ConfigOpt, DeviceOpt, JsonFlag, ProblemsDirOpt, SetOpt
from kbench.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    app,
    console,
    examples,
    fail,
    parse_overrides,
    print_json,
    settings,
)
from kbench.device_kind import on_gpu


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
