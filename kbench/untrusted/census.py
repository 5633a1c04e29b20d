"""Kernel census: which GPU kernels one forward call launched, for how long, and whether any is the
solution's own (named in its source) rather than PyTorch's, cuBLAS's or cuDNN's."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\s*\([^)]*\)")
_KERNEL_DEFINITIONS = (
    re.compile(r"__global__\s+(?:(?:static|inline|__forceinline__)\s+)*[\w:<>]+\s+(\w+)\s*\("),  # __global__ void f(
    re.compile(r"@(?:triton\.)?jit[^\n]*\n\s*def\s+(\w+)\s*\("),  # Triton: @triton.jit def name(
)


def own_kernel_names(source: str) -> set[str]:
    text = _LAUNCH_BOUNDS.sub(" ", source)
    return {name for pattern in _KERNEL_DEFINITIONS for name in pattern.findall(text)}


def _is_own(kernel: str, names: set[str]) -> bool:
    return any(re.search(rf"(^|[\s:*&]){re.escape(name)}\b", kernel) for name in names)


def device_kind(event: Any) -> str:
    """Where a torch.profiler event ran: "CPU", "CUDA", ..."""
    return str(getattr(event, "device_type", "")).split(".")[-1]


def kernel_census(forward: Callable[..., Any], inputs: list[Any], source: str) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof, torch.no_grad():
        forward(*inputs)
        torch.cuda.synchronize()
    names = own_kernel_names(source)
    rows = []
    for event in prof.key_averages():
        if device_kind(event) != "CUDA":
            continue
        device_us = getattr(event, "device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "cuda_time_total", 0.0)
        rows.append(
            {
                "name": event.key[:200],
                "calls": int(event.count),
                "device_ms": float(device_us) / 1e3,
                "own": _is_own(event.key, names),
            }
        )
    return sorted(rows, key=lambda row: -row["device_ms"])
