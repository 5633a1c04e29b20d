"""The ``kbench`` commands, a module for each group; ``kbench.cli`` imports them, and so registers them."""
