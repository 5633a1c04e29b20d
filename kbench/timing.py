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

# Bound when kbench is imported, before any solution is: a solution that later replaces these module
# attributes changes nothing here (and the worker's guards flag the attempt as timer tampering).
_perf_counter = time.perf_counter
_Event = torch.cuda.Event
_record = torch.cuda.Event.record
_elapsed_time = torch.cuda.Event.elapsed_time
_synchronize = torch.cuda.synchronize


@dataclass
class TimedCalls:
    samples_ms: list[float]
    last_outputs: list[Any]  # the last timed call's output for each input set, checked by the parent


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
) -> TimedCalls:
    """Milliseconds per call for ``plan.repeats`` calls after ``plan.warmup`` untimed ones."""
    outputs: list[Any] = [None] * len(input_sets)

    def timed(index: int) -> None:
        outputs[index % len(input_sets)] = forward(*input_sets[index % len(input_sets)])

    samples = _time_cuda(timed, plan) if device.startswith("cuda") else _time_cpu(timed, plan)
    return TimedCalls(samples, outputs)


def _time_cpu(timed: Callable[[int], None], plan: TimingPlan) -> list[float]:
    samples = []
    with torch.no_grad():
        for i in range(plan.warmup):
            timed(i)
        for i in range(plan.repeats):
            start = _perf_counter()
            timed(plan.warmup + i)
            samples.append((_perf_counter() - start) * 1e3)
    return samples


def _time_cuda(timed: Callable[[int], None], plan: TimingPlan) -> list[float]:
    flush = _l2_flush_buffer() if plan.flush_l2 else None
    starts = [_Event(enable_timing=True) for _ in range(plan.repeats)]
    ends = [_Event(enable_timing=True) for _ in range(plan.repeats)]
    with torch.no_grad():
        for i in range(plan.warmup):
            timed(i)
        _synchronize()
        for i in range(plan.repeats):
            if flush is not None:
                flush.zero_()
            _record(starts[i])
            timed(plan.warmup + i)
            _record(ends[i])
        _synchronize()
    return [_elapsed_time(s, e) for s, e in zip(starts, ends, strict=True)]
