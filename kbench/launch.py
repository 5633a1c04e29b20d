"""The ``kbench`` console script: bytecode settled first (see ``caches``), then the command line."""

from __future__ import annotations

from kbench import caches


def main() -> None:
    caches.keep_bytecode_here()
    from kbench.cli import app  # imports torch: after the bytecode location is settled

    app()
