"""UNTRUSTED: code that runs in the same process as a solution (the solution worker and its in-process guards).

Nothing here is believed by the parent: the worker's outputs are compared by the trusted side, its messages
checked against a protocol, its process killed from outside. The trusted side (the parent, the reference
workers, the judge) never imports this package; ``tests/test_layout.py`` keeps it so.
"""
