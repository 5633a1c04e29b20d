"""The ``kbench`` console script: bytecode settled first (see ``caches``), then the command line."""

from __future__ import annotations

from kbench import caches


def main() -> None:
    caches.keep_bytecode_here()
    # After the bytecode location is settled: the commands that need torch import it from here on.
    from kbench.cli import main as cli_main

    cli_main()
