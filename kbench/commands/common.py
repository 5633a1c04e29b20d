"""What the ``kbench`` commands share: the typer app they register on, the consoles, exit codes, and the checks of
their common arguments (device, configuration, sizes) and writing of exports, each a usage error that says what to
do. Only light modules are imported here (see ``kbench.cli``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from kbench import catalog

if TYPE_CHECKING:  # annotations only; the commands import these when they run
    from kbench.config import KbenchConfig
    from kbench.devices import Device
    from kbench.export import ExportContext
    from kbench.gate import GateCheck
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


def gate_code(checks: list[GateCheck]) -> int:
    return EXIT_OK if checks and all(c.passed for c in checks) else EXIT_FAILED
