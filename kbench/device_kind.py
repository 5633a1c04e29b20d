"""Whether a device word names a GPU: decided here, once.

A run's ``--device`` and the worker protocol's device are one word, ``cpu`` or ``cuda`` (``cuda:N`` where a user
names a GPU): a worker sees only its own GPU, so inside it the word needs no index. The parent's lanes hold
``kbench.devices.Device`` objects; everything that branches on the word asks this module rather than testing the
string itself. Dependency-free, so workers of both sides import it.
"""

from __future__ import annotations

GPU_KIND = "cuda"


def on_gpu(device: str) -> bool:
    """``cuda``, ``cuda:0``: a GPU; ``cpu``: not."""
    return device.startswith(GPU_KIND)
