"""Measured ceilings of the current device: copy bandwidth and matrix-product rates.

Timed with kbench's own timer (events on CUDA, L2 flushed, adaptive count). The numbers are cached per
device name and used to show each solution's time against the least time its bytes take at the measured
bandwidth (``roofline_fraction``). Trusted code only: no solution runs here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kbench.stats import median_ms
from kbench.timing import TimingPlan, time_models

# Sizes large enough to fill the device; small on the CPU so a calibration takes seconds there.
COPY_BYTES = {"cuda": 1 << 30, "cpu": 1 << 26}
GEMM_SIZE = {"cuda": 8192, "cpu": 1024}


@dataclass
class Ceilings:
    device_name: str
    copy_gbs: float  # bytes read plus bytes written, per second, in GB
    gemm_tflops: dict[str, float] = field(default_factory=dict)  # per precision


def _median_ms(forward: Any, inputs: list[Any], device: str, plan: TimingPlan) -> float:
    samples = time_models([forward], [[inputs]], device, plan).samples_ms[0]
    value = median_ms(samples)
    if value is None or value <= 0:
        raise RuntimeError("no usable timing samples")
    return value


def measure(device: str, device_name: str, plan: TimingPlan, scale: float = 1.0) -> Ceilings:
    kind = "cuda" if device.startswith("cuda") else "cpu"
    elements = int(COPY_BYTES[kind] * scale) // 4
    source = torch.rand(elements, device=device)
    target = torch.empty_like(source)
    copy_ms = _median_ms(lambda s: target.copy_(s), [source], device, plan)
    ceilings = Ceilings(device_name, copy_gbs=2 * source.numel() * 4 / (copy_ms * 1e-3) / 1e9)
    n = max(64, int(GEMM_SIZE[kind] * scale))
    precisions = {"fp32": (torch.float32, False)}
    if kind == "cuda":
        precisions |= {"tf32": (torch.float32, True), "bf16": (torch.bfloat16, False)}
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, (dtype, tf32) in precisions.items():
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.rand(n, n, device=device, dtype=dtype)
            b = torch.rand(n, n, device=device, dtype=dtype)
            gemm_ms = _median_ms(torch.mm, [a, b], device, plan)
            ceilings.gemm_tflops[name] = 2 * n**3 / (gemm_ms * 1e-3) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return ceilings
