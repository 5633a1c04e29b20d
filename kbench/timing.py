"""Timing one forward call, repeated: CUDA events on a GPU, ``perf_counter`` on the CPU.

Each timed call gets the next of several input sets (so small inputs are not timed hot in cache) and, on a
GPU, follows an overwrite of a buffer twice the size of L2, outside the timed region.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

FALLBACK_L2_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class TimingPlan:
    warmup: int
    repeats: int
    flush_l2: bool

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimingPlan:
        return cls(warmup=int(data["warmup"]), repeats=int(data["repeats"]), flush_l2=bool(data["flush_l2"]))


def median_ms(samples: Sequence[float]) -> float | None:
    return statistics.median(samples) if samples else None


def _l2_flush_buffer() -> torch.Tensor:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2_bytes = getattr(props, "L2_cache_size", 0) or FALLBACK_L2_BYTES
    return torch.empty(2 * l2_bytes // 4, dtype=torch.float32, device="cuda")


def time_calls(
    forward: Callable[..., Any], input_sets: Sequence[Sequence[Any]], device: str, plan: TimingPlan
) -> list[float]:
    """Milliseconds per call for ``plan.repeats`` calls after ``plan.warmup`` untimed ones."""
    if device.startswith("cuda"):
        return _time_cuda(forward, input_sets, plan)
    return _time_cpu(forward, input_sets, plan)


def _time_cpu(forward: Callable[..., Any], input_sets: Sequence[Sequence[Any]], plan: TimingPlan) -> list[float]:
    samples = []
    with torch.no_grad():
        for i in range(plan.warmup):
            forward(*input_sets[i % len(input_sets)])
        for i in range(plan.repeats):
            inputs = input_sets[i % len(input_sets)]
            start = time.perf_counter()
            forward(*inputs)
            samples.append((time.perf_counter() - start) * 1e3)
    return samples


def _time_cuda(forward: Callable[..., Any], input_sets: Sequence[Sequence[Any]], plan: TimingPlan) -> list[float]:
    flush = _l2_flush_buffer() if plan.flush_l2 else None
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(plan.repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(plan.repeats)]
    with torch.no_grad():
        for i in range(plan.warmup):
            forward(*input_sets[i % len(input_sets)])
        torch.cuda.synchronize()
        for i in range(plan.repeats):
            inputs = input_sets[i % len(input_sets)]
            if flush is not None:
                flush.zero_()
            starts[i].record()
            forward(*inputs)
            ends[i].record()
        torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
