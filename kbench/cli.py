"""The ``kbench`` command line: parses arguments, calls the library, prints. Exit codes:

0 every verdict correct / the gate passed; 1 a verdict or the gate failed; 2 usage error or bad input (also:
nothing to run); 3 kbench itself failed (an internal error, or it could not write its results or caches).

Only light modules are imported here: torch, pandas and pydantic load inside the commands that need them, so
``--help``, ``--version``, ``list`` and ``cache`` answer at once.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated

import typer
from rich.markup import escape

from kbench import __version__
from kbench.commands.common import EXIT_INTERNAL, EXIT_OK, app, errors, examples

# Each module registers its commands on ``app`` as it is imported: in this order, which ``--help`` keeps.
# isort: off
from kbench.commands import running, checks, runs, cache  # noqa: F401
# isort: on


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
