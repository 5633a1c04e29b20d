"""Timing forward calls: CUDA events on a GPU, ``perf_counter`` on the CPU, in rounds.

A round calls each timed callable once: one callable times a model alone, two time reference and solution
interleaved (ABAB...), so clock drift and thermal changes hit both alike. Each call follows an overwrite
of a buffer twice the size of L2, outside the timed region, and takes the next of several input sets.
Timing stops once every callable's median has a relative standard error under the target, or the time
budget or the maximum count is reached, whichever comes first; never before ``repeats`` rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kbench.integrity import fingerprint, plain_tensors, same
from kbench.stats import median_rse

FALLBACK_L2_BYTES = 50 * 1024 * 1024

# Bound when kbench is imported, before any solution is: a solution that later replaces these module
# attributes changes nothing here (and the worker's guards flag the attempt as timer tampering).
_perf_counter = time.perf_counter
_Event = torch.cuda.Event
_record = torch.cuda.Event.record
_elapsed_time = torch.cuda.Event.elapsed_time
_synchronize = torch.cuda.synchronize


@dataclass(frozen=True)
class TimingPlan:
    warmup: int
    repeats: int  # rounds at least
    max_repeats: int  # rounds at most
    target_rse: float  # stop once every median's relative standard error is below this
    budget_s: float  # or once timing has taken this long
    flush_l2: bool

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimingPlan:
        return cls(
            warmup=int(data["warmup"]),
            repeats=int(data["repeats"]),
            max_repeats=int(data["max_repeats"]),
            target_rse=float(data["target_rse"]),
            budget_s=float(data["budget_s"]),
            flush_l2=bool(data["flush_l2"]),
        )


@dataclass
class TimedCalls:
    samples_ms: list[list[float]]  # per model, one sample per round
    last_outputs: list[Any]  # the last model's last output on each input set, checked by the parent
    deferred: bool = False  # the last model's output changed after its call had returned (work left running)


def _l2_flush_buffer() -> torch.Tensor:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2_bytes = getattr(props, "L2_cache_size", 0) or FALLBACK_L2_BYTES
    return torch.empty(2 * l2_bytes // 4, dtype=torch.float32, device="cuda")


@dataclass
class _Timed:
    call: Callable[[int], None]  # the timed region
    after: Callable[[int], None] | None = None  # runs right after the timed region, before the next call


def time_models(
    forwards: Sequence[Callable[..., Any]],
    input_sets: Sequence[Sequence[Sequence[Any]]],
    device: str,
    plan: TimingPlan,
) -> TimedCalls:
    """Time each forward on its own input sets (``input_sets[i]`` for ``forwards[i]``, so no model sees
    another's tensors), in rounds, interleaved when several. The last forward's outputs are kept and
    fingerprinted as soon as each call returns, outside the timed region; a fingerprint that differs after
    the final synchronisation means work was still running when the call returned."""
    count = len(input_sets[0])
    outputs: list[Any] = [None] * count
    early: list[list[torch.Tensor] | None] = [None] * count

    def bind(forward: Callable[..., Any], sets: Sequence[Sequence[Any]], watched: bool) -> _Timed:
        def call(index: int) -> None:
            result = forward(*sets[index % count])
            if watched:
                outputs[index % count] = result

        def after(index: int) -> None:
            early[index % count] = fingerprint(plain_tensors(outputs[index % count]))

        return _Timed(call, after if watched else None)

    timed = [
        bind(f, sets, watched=i == len(forwards) - 1)
        for i, (f, sets) in enumerate(zip(forwards, input_sets, strict=True))
    ]
    samples = _time_rounds(timed, device.startswith("cuda"), plan)
    if not device.startswith("cuda"):
        time.sleep(0.02)  # as in CallWatch: a thread still writing the last outputs shows within this window
    late = [fingerprint(plain_tensors(output)) for output in outputs]
    deferred = any(
        before is not None and not all(same(a, b) for a, b in zip(before, after, strict=True))
        for before, after in zip(early, late, strict=True)
    )
    return TimedCalls(samples, outputs, deferred)


def _time_rounds(timed: list[_Timed], cuda: bool, plan: TimingPlan) -> list[list[float]]:
    samples: list[list[float]] = [[] for _ in timed]
    flush = _l2_flush_buffer() if cuda and plan.flush_l2 else None
    with torch.no_grad():
        for i in range(plan.warmup):
            for each in timed:
                each.call(i)
        if cuda:
            _synchronize()
        started = _perf_counter()
        index = plan.warmup
        while True:
            batch = min(plan.repeats, plan.max_repeats - len(samples[0]))
            batch_samples = _time_batch(timed, index, batch, flush) if cuda else _time_batch_cpu(timed, index, batch)
            for mine, new in zip(samples, batch_samples, strict=True):
                mine.extend(new)
            index += batch
            done = len(samples[0]) >= plan.max_repeats or _perf_counter() - started >= plan.budget_s
            if done or all(median_rse(s) <= plan.target_rse for s in samples):
                if cuda:
                    _synchronize()
                return samples


def _time_batch_cpu(timed: list[_Timed], first: int, count: int) -> list[list[float]]:
    samples: list[list[float]] = [[] for _ in timed]
    for i in range(first, first + count):
        for each, mine in zip(timed, samples, strict=True):
            start = _perf_counter()
            each.call(i)
            mine.append((_perf_counter() - start) * 1e3)
            if each.after is not None:
                each.after(i)
    return samples


def _time_batch(timed: list[_Timed], first: int, count: int, flush: torch.Tensor | None) -> list[list[float]]:
    events = [[(_Event(enable_timing=True), _Event(enable_timing=True)) for _ in range(count)] for _ in timed]
    for k, i in enumerate(range(first, first + count)):
        for each, pairs in zip(timed, events, strict=True):
            if flush is not None:
                flush.zero_()
            _record(pairs[k][0])
            each.call(i)
            _record(pairs[k][1])
            if each.after is not None:
                each.after(i)
    _synchronize()
    return [[_elapsed_time(start, end) for start, end in pairs] for pairs in events]
