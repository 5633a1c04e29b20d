"""Timing forward calls: CUDA events on a GPU, ``perf_counter`` on the CPU, in rounds.

A round calls each timed callable once: one callable times a model alone, two time reference and solution
interleaved (ABAB...), so clock drift and thermal changes hit both alike. Each call follows an overwrite
of a buffer twice the size of L2, outside the timed region, and takes the next of several input sets.
Warm-up lasts ``warmup`` rounds and ``warmup_s`` seconds at least. Timing stops once every callable's median has
a relative standard error under the target, or the time budget or the maximum count is reached, whichever
comes first; never before ``repeats`` rounds and ``min_time_s`` seconds (unless the budget ends it).
On CUDA the plan's mode picks what one sample is: events around the call (``events``), events around a
CUDA-graph replay of it (``graph``), or the device time of its kernels (``kernel``); see ``timing_modes``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kbench.device_kind import on_gpu
from kbench.fingerprints import fingerprint, plain_tensors, same
from kbench.stats import median_rse
from kbench.timing_modes import (
    ModeUnavailable,
    Sampler,
    Timed,
    _synchronize,
    capture_graphs,
    each_call,
    kernel_batch,
    probe_kernels,
)

FALLBACK_L2_BYTES = 50 * 1024 * 1024

# Bound when kbench is imported, before any solution is: a solution that later replaces these module
# attributes changes nothing here (and the worker's guards flag the attempt as timer tampering). The graph and
# profiler functions, and ``_synchronize``, are bound the same way in ``timing_modes``.
_perf_counter = time.perf_counter
_Event = torch.cuda.Event
_record = torch.cuda.Event.record
_elapsed_time = torch.cuda.Event.elapsed_time


@dataclass(frozen=True)
class TimingPlan:
    warmup: int  # untimed rounds at least
    warmup_s: float  # and untimed seconds at least
    repeats: int  # rounds at least
    max_repeats: int  # rounds at most
    target_rse: float  # stop once every median's relative standard error is below this
    budget_s: float  # or once timing has taken this long
    min_time_s: float  # but not before it has taken this long
    flush_l2: bool
    mode: str = "events"  # events | graph | kernel (CUDA only for the last two)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimingPlan:
        return cls(
            warmup=int(data["warmup"]),
            warmup_s=float(data["warmup_s"]),
            repeats=int(data["repeats"]),
            max_repeats=int(data["max_repeats"]),
            target_rse=float(data["target_rse"]),
            budget_s=float(data["budget_s"]),
            min_time_s=float(data["min_time_s"]),
            flush_l2=bool(data["flush_l2"]),
            mode=str(data.get("mode", "events")),
        )


@dataclass
class TimedCalls:
    samples_ms: list[list[float]]  # per model, one sample per round
    last_outputs: list[Any]  # the last model's last output on each input set, checked by the parent
    deferred: bool = False  # the last model's output changed after its call had returned (work left running)
    mode: str = "events"  # the mode actually used
    fallback: str | None = None  # why the plan's mode could not be used, when it could not


def _l2_flush_buffer() -> torch.Tensor:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2_bytes = getattr(props, "L2_cache_size", 0) or FALLBACK_L2_BYTES
    return torch.empty(2 * l2_bytes // 4, dtype=torch.float32, device="cuda")


def time_models(
    forwards: Sequence[Callable[..., Any]],
    input_sets: Sequence[Sequence[Sequence[Any]]],
    device: str,
    plan: TimingPlan,
    labels: Sequence[str] | None = None,
) -> TimedCalls:
    """Time each forward on its own input sets (``input_sets[i]`` for ``forwards[i]``, so no model sees
    another's tensors), in rounds, interleaved when several. The last forward's outputs are kept and
    fingerprinted as soon as each call returns, outside the timed region; a fingerprint that differs after
    the final synchronisation means work was still running when the call returned. ``labels`` name the
    forwards in a fallback reason."""
    if plan.mode not in ("events", *_SETUP):
        raise ValueError(f"unknown timing mode '{plan.mode}'")
    if plan.mode != "events" and not on_gpu(device):
        raise ValueError(f"timing mode '{plan.mode}' needs CUDA")  # refused before anything runs
    count = len(input_sets[0])
    outputs: list[Any] = [None] * count
    early: list[list[torch.Tensor] | None] = [None] * count
    names = list(labels) if labels is not None else [f"model {i}" for i in range(len(forwards))]

    def bind(forward: Callable[..., Any], sets: Sequence[Sequence[Any]], label: str, watched: bool) -> Timed:
        def call(index: int) -> None:
            result = forward(*sets[index % count])
            if watched:
                outputs[index % count] = result

        def after(index: int) -> None:
            early[index % count] = fingerprint(plain_tensors(outputs[index % count]))

        return Timed(call, label, after if watched else None, outputs=outputs if watched else None)

    timed = [
        bind(f, sets, label, watched=i == len(forwards) - 1)
        for i, (f, sets, label) in enumerate(zip(forwards, input_sets, names, strict=True))
    ]
    samples, fallback = _time_rounds(timed, count, on_gpu(device), plan)
    if not on_gpu(device):
        time.sleep(0.02)  # as in CallWatch: a thread still writing the last outputs shows within this window
    late = [fingerprint(plain_tensors(output)) for output in outputs]
    deferred = any(
        before is not None and not all(same(a, b) for a, b in zip(before, after, strict=True))
        for before, after in zip(early, late, strict=True)
    )
    return TimedCalls(samples, outputs, deferred, "events" if fallback else plan.mode, fallback)


def _probed_kernels(
    timed: list[Timed], count: int, index: int, flush: torch.Tensor | None
) -> tuple[Sampler, list[Timed]]:
    probe_kernels(timed, index, flush)
    return kernel_batch, timed


# How the CUDA-only modes set up once the eager warm-up is done (graph capture, the profiler's first round),
# untimed: (timed, input set count, next round's index, flush buffer) -> (the batch timer, the calls it times).
_SETUP: dict[str, Callable[[list[Timed], int, int, torch.Tensor | None], tuple[Sampler, list[Timed]]]] = {
    "graph": lambda timed, count, index, flush: (_time_batch, capture_graphs(timed, count)),
    "kernel": _probed_kernels,
}


def warm_up(rounds: Callable[[int, int], object], plan: TimingPlan) -> int:
    """Untimed rounds (``rounds(first, count)`` runs and waits for them): ``plan.warmup`` at least, and more
    until ``plan.warmup_s`` has passed. Returns the index of the first round after them."""
    started = _perf_counter()
    rounds(0, plan.warmup)
    index, step = plan.warmup, max(plan.warmup, 1)
    while _perf_counter() - started < plan.warmup_s:
        rounds(index, step)
        index += step
    return index


def _sampler(
    timed: list[Timed], count: int, cuda: bool, plan: TimingPlan, flush: torch.Tensor | None
) -> tuple[Sampler, list[Timed], str | None, int]:
    """Warm up, then the batch timer for the plan's mode, the calls it times, why it fell back to events
    (None: it did not) and the index of the first timed round."""
    if plan.mode == "events":
        # Warm-up rounds go through the timer itself, samples discarded: the first timed round then pays no
        # first-use cost of the timed path.
        sampler = _time_batch if cuda else _time_batch_cpu
        return sampler, timed, None, warm_up(lambda first, rounds: sampler(timed, first, rounds, flush), plan)

    def eager(first: int, rounds: int) -> None:
        for i in range(first, first + rounds):
            for each in timed:
                each.call(i)
        _synchronize()

    index = warm_up(eager, plan)
    try:
        return (*_SETUP[plan.mode](timed, count, index, flush), None, index)
    except ModeUnavailable as exc:
        _synchronize()
        return _time_batch, timed, str(exc), index


def _time_rounds(timed: list[Timed], count: int, cuda: bool, plan: TimingPlan) -> tuple[list[list[float]], str | None]:
    """(samples per model, the fallback reason or None)."""
    flush = _l2_flush_buffer() if cuda and plan.flush_l2 else None
    with torch.no_grad():
        sampler, timed, fallback, index = _sampler(timed, count, cuda, plan, flush)
        samples = collect(lambda first, rounds: sampler(timed, first, rounds, flush), index, len(timed), plan)
        if cuda:
            _synchronize()
        return samples, fallback


def collect(
    batch: Callable[[int, int], list[list[float]]], first: int, models: int, plan: TimingPlan
) -> list[list[float]]:
    """Timed rounds from ``first`` on, ``batch(first, count)`` giving each model's samples of ``count`` rounds, until
    the plan's stopping rule holds: every median's relative standard error under the target after ``min_time_s``, or
    the budget or the maximum count reached. Used in one process (``time_models``) and across two (``kbench.turns``)."""
    samples: list[list[float]] = [[] for _ in range(models)]
    index, started = first, _perf_counter()
    while True:
        count = min(plan.repeats, plan.max_repeats - len(samples[0]))
        for mine, new in zip(samples, batch(index, count), strict=True):
            mine.extend(new)
        index += count
        elapsed = _perf_counter() - started
        done = len(samples[0]) >= plan.max_repeats or elapsed >= plan.budget_s
        settled = elapsed >= plan.min_time_s and all(median_rse(s) <= plan.target_rse for s in samples)
        if done or settled:
            return samples


def _time_batch_cpu(timed: list[Timed], first: int, count: int, flush: torch.Tensor | None) -> list[list[float]]:
    samples: list[list[float]] = [[] for _ in timed]

    def region(m: int, k: int, call: Callable[[], None]) -> None:
        start = _perf_counter()
        call()
        samples[m].append((_perf_counter() - start) * 1e3)

    each_call(timed, first, count, None, region)
    return samples


def _time_batch(timed: list[Timed], first: int, count: int, flush: torch.Tensor | None) -> list[list[float]]:
    events = [[(_Event(enable_timing=True), _Event(enable_timing=True)) for _ in range(count)] for _ in timed]

    def region(m: int, k: int, call: Callable[[], None]) -> None:
        start, end = events[m][k]
        _record(start)
        call()
        _record(end)

    each_call(timed, first, count, flush, region)
    _synchronize()
    return [[_elapsed_time(start, end) for start, end in pairs] for pairs in events]
