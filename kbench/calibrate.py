"""Measured ceilings of the current device: copy bandwidth and matrix-product rates.

Timed with kbench's own timer (events on CUDA by default, L2 flushed, adaptive count). The numbers are cached
per device name and used to show each solution's time against the least time its bytes take at the measured
bandwidth (``roofline_fraction``). On CUDA the copy and the fp32 product are also timed in both ``events`` and
``kernel`` mode, and their agreement is reported. Trusted code only: no solution runs here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from kbench.device_kind import on_gpu
from kbench.stats import median_ms
from kbench.timing import TimingPlan, time_models

# Sizes large enough to fill the device; small on the CPU so a calibration takes seconds there.
COPY_BYTES = {"cuda": 1 << 30, "cpu": 1 << 26}
GEMM_SIZE = {"cuda": 8192, "cpu": 1024}
# Timed in both events and kernel mode on CUDA: one memory-bound and one compute-bound known kernel.
AGREEMENT_WORKLOADS = ("copy", "fp32")


@dataclass
class Ceilings:
    device_name: str
    copy_gbs: float  # bytes read plus bytes written, per second, in GB
    gemm_tflops: dict[str, float] = field(default_factory=dict)  # per precision
    # |events median - kernel median| / events median, per workload (CUDA only)
    kernel_agreement: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what could not be measured, and why

    def fastest_flops_per_s(self) -> float | None:
        """The fastest matrix-product rate measured, in any precision: no call can do its products faster."""
        return max(self.gemm_tflops.values()) * 1e12 if self.gemm_tflops else None


@dataclass
class _Workload:
    name: str  # "copy", or the matrix product's precision
    forward: Callable[..., Any]
    inputs: list[Any]
    work: float  # bytes moved (copy) or floating-point operations (products)
    tf32: bool = False


def _workloads(device: str, kind: str, scale: float) -> list[_Workload]:
    source = torch.rand(int(COPY_BYTES[kind] * scale) // 4, device=device)
    target = torch.empty_like(source)
    found = [_Workload("copy", lambda s: target.copy_(s), [source], 2.0 * source.numel() * 4)]
    n = max(64, int(GEMM_SIZE[kind] * scale))
    precisions = {"fp32": (torch.float32, False)}
    if on_gpu(kind):
        precisions |= {"tf32": (torch.float32, True), "bf16": (torch.bfloat16, False)}
    for name, (dtype, tf32) in precisions.items():
        a, b = (torch.rand(n, n, device=device, dtype=dtype) for _ in range(2))
        found.append(_Workload(name, torch.mm, [a, b], 2.0 * n**3, tf32))
    return found


def _median(workload: _Workload, device: str, plan: TimingPlan) -> tuple[float | None, str | None]:
    """(median ms, or None when no sample is usable; why the plan's mode fell back, or None)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = workload.tf32
    try:
        timed = time_models([workload.forward], [[workload.inputs]], device, plan, [workload.name])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    value = median_ms(timed.samples_ms[0])
    return (value if value is not None and value > 0 else None), timed.fallback


def measure(device: str, device_name: str, plan: TimingPlan, scale: float = 1.0) -> Ceilings:
    kind = "cuda" if on_gpu(device) else "cpu"
    workloads = _workloads(device, kind, scale)
    measured: dict[tuple[str, str], tuple[float | None, str | None]] = {}

    def timed(workload: _Workload, mode: str) -> tuple[float | None, str | None]:
        if (workload.name, mode) not in measured:
            measured[workload.name, mode] = _median(workload, device, replace(plan, mode=mode))
        return measured[workload.name, mode]

    rates, notes = {}, []
    for workload in workloads:
        value, fallback = timed(workload, plan.mode)
        if value is None:
            raise RuntimeError(f"no usable timing samples for {workload.name}")
        rates[workload.name] = workload.work / (value * 1e-3)
        notes += [f"{workload.name}: timed with events: {fallback}"] if fallback else []
    ceilings = Ceilings(device_name, copy_gbs=rates.pop("copy") / 1e9, notes=notes)
    ceilings.gemm_tflops = {name: rate / 1e12 for name, rate in rates.items()}
    if on_gpu(kind):
        for workload in (w for w in workloads if w.name in AGREEMENT_WORKLOADS):
            (events_ms, _), (kernel_ms, fallback) = timed(workload, "events"), timed(workload, "kernel")
            if events_ms and kernel_ms and not fallback:
                ceilings.kernel_agreement[workload.name] = abs(events_ms - kernel_ms) / events_ms
            else:
                reason = fallback or "no usable kernel timing samples"
                ceilings.notes.append(f"{workload.name}: events and kernel timing not compared: {reason}")
    return ceilings
