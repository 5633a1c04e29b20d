"""``python -m kbench``: the same command line as the ``kbench`` console script."""

from kbench.launch import main

if __name__ == "__main__":
    main()
