"""The CUDA timing modes beyond per-call events: CUDA-graph replay (``graph``) and profiler kernel time (``kernel``).

Both work on the same timed calls as the events timer in ``timing``: a call ``call(index)`` runs one forward on
input set ``index % count``, with ``before``/``after`` hooks and the L2 flush outside the timed region.

- ``graph``: after warm-up, every (model, input set) pair is captured into its own CUDA graph, on that set's own
  tensors, so replays read exactly the inputs an eager call would. The replays are then timed with events. A
  model that cannot be captured makes the whole timing fall back to events (``ModeUnavailable``), so the models
  timed together are always timed alike.
- ``kernel``: each call runs inside a uniquely named ``record_function`` range under torch.profiler. A sample is
  the summed device time of the kernels, copies and fills whose launching CUDA API call started inside the
  range: the L2 flush, the output fingerprints and anything else outside the call are not counted.
"""

from __future__ import annotations

import bisect
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

from kbench.fingerprints import plain_tensors

# Bound when kbench is imported, before any solution is: a solution that later replaces these module
# attributes changes nothing here (and the worker's guards flag the attempt as timer tampering).
_synchronize = torch.cuda.synchronize
_current_stream = torch.cuda.current_stream
_Stream = torch.cuda.Stream
_stream = torch.cuda.stream
_CUDAGraph = torch.cuda.CUDAGraph
_graph = torch.cuda.graph
_replay = torch.cuda.CUDAGraph.replay
_profile = torch.profiler.profile
_record_function = torch.profiler.record_function
_ACTIVITIES = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]


class ModeUnavailable(RuntimeError):
    """This timing mode cannot time these calls; the message says why (it becomes ``timing_fallback``)."""


@dataclass
class Timed:
    """One model's timed calls: ``call(index)`` is the timed region, the hooks run outside it."""

    call: Callable[[int], None]
    label: str  # names the model in a fallback reason: "reference", "solution"
    after: Callable[[int], None] | None = None  # right after the timed region, before the next call
    before: Callable[[int], None] | None = None  # right before the L2 flush that precedes the timed region
    outputs: list[Any] | None = None  # the watched model's latest output on each input set, checked by the parent


# The timed region around one call: region(model, call_in_batch, call).
Region = Callable[[int, int, Callable[[], None]], None]
# A batch timer: (timed, first index, calls per model, L2 flush buffer) -> samples per model, in ms.
Sampler = Callable[[list[Timed], int, int, torch.Tensor | None], list[list[float]]]


def each_call(timed: list[Timed], first: int, count: int, flush: torch.Tensor | None, region: Region) -> None:
    """Rounds ``first .. first + count - 1``: in each, every model once, in order (interleaved)."""
    for k in range(count):
        for m, each in enumerate(timed):
            call = partial(each.call, first + k)
            if each.before is not None:
                each.before(first + k)
            if flush is not None:
                flush.zero_()
            region(m, k, call)
            if each.after is not None:
                each.after(first + k)


def _describe(exc: BaseException) -> str:
    """The first error in the chain: a failed capture's own error comes before the one ending the capture."""
    for _ in range(20):  # bounded: a solution's exception can be given a cyclic chain
        if exc.__context__ is None:
            break
        exc = exc.__context__
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# --- graph --------------------------------------------------------------------------------------------------


def poison(tensors: list[torch.Tensor]) -> None:
    """Overwrite outputs before a replay: a graph that does not recompute them (work done eagerly at capture
    time, say) leaves NaN, or flipped bits for integer and boolean outputs, and the parent sees a mismatch."""
    for tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            tensor.detach().fill_(float("nan"))
        else:
            tensor.detach().bitwise_not_()


# Graphs whose capture failed. torch's allocator can keep a reference to such a graph (its capture never
# ended cleanly), so they are kept alive for the life of the worker rather than freed under it.
_failed_captures: list[torch.cuda.CUDAGraph] = []


def _capture(each: Timed, index: int, stream: torch.cuda.Stream) -> torch.cuda.CUDAGraph:
    stream.wait_stream(_current_stream())
    graph = _CUDAGraph()
    try:
        # The outer stream context restores the caller's stream even when ending the capture raises.
        with _stream(stream):
            each.call(index)  # one eager call on the capture stream: lazy set-up must not happen in the capture
            with _graph(graph, stream=stream):
                each.call(index)
    except Exception:
        _failed_captures.append(graph)
        raise
    _current_stream().wait_stream(stream)
    return graph


def capture_graphs(timed: list[Timed], count: int) -> list[Timed]:
    """The same calls as CUDA-graph replays: one graph per model and input set, captured on that set's tensors,
    in the order they are replayed. A watched model's captured outputs are its static outputs, poisoned before
    each replay. Raises ModeUnavailable naming the first model that cannot be captured."""
    stream = _Stream()
    graphs: list[list[torch.cuda.CUDAGraph]] = [[] for _ in timed]
    for index in range(count):
        for each, mine in zip(timed, graphs, strict=True):
            try:
                mine.append(_capture(each, index, stream))
                if each.outputs is not None:
                    poison(plain_tensors(each.outputs[index]))
            except Exception as exc:
                raise ModeUnavailable(f"the {each.label} cannot be captured in a CUDA graph: {_describe(exc)}") from exc
    for mine in graphs:
        for graph in mine:
            _replay(graph)  # the first replay uploads the graph; it also fills the static outputs
    _synchronize()

    def replays(each: Timed, mine: list[torch.cuda.CUDAGraph]) -> Timed:
        def call(index: int) -> None:
            _replay(mine[index % count])

        outputs = each.outputs
        before = None if outputs is None else lambda index: poison(plain_tensors(outputs[index % count]))
        return replace(each, call=call, before=before)

    return [replays(each, mine) for each, mine in zip(timed, graphs, strict=True)]


# --- kernel -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    """One raw profiler record: a host event (an operator, a range, a CUDA API call) or a device one."""

    name: str
    on_device: bool
    correlation: int  # CUPTI gives an API call and the device work it launched the same id
    start_ns: int
    duration_ns: int

    @classmethod
    def from_kineto(cls, event: Any) -> Activity:
        on_device = str(event.device_type()).split(".")[-1] != "CPU"
        return cls(event.name(), on_device, event.correlation_id(), event.start_ns(), event.duration_ns())


# CUDA runtime and driver API calls (cudaLaunchKernel, cuLaunchKernelEx, cudaMemcpyAsync, ...), as the profiler
# names them; operators are named "aten::...", and kbench's ranges carry their prefix.
_API_CALL = re.compile(r"cu(da)?[A-Z]\w*$")


def kernel_totals_ms(activities: Iterable[Activity], prefix: str) -> dict[str, float]:
    """Device time (ms) per profiler range whose name starts with ``prefix``: the kernels, copies and fills
    whose launching API call started on the host inside the range. Work a call launches through an operator
    or straight from an extension is found alike, by its correlation id. The GPU-side copy of a range (a
    device record named like a host range of its correlation id) is a span, not work, and is left out.
    Device work that cannot be placed safely raises ModeUnavailable, so the timing falls back to events
    rather than leave work out: a correlation id held by several API calls, or one held by none."""
    activities = list(activities)
    host = [a for a in activities if not a.on_device]
    windows = sorted((a.start_ns, a.start_ns + a.duration_ns, a.name) for a in host if a.name.startswith(prefix))
    starts = [start for start, _, _ in windows]
    launched_at: dict[int, list[int]] = {}
    host_names: dict[int, set[str]] = {}
    for a in host:
        host_names.setdefault(a.correlation, set()).add(a.name)
        if _API_CALL.match(a.name):
            launched_at.setdefault(a.correlation, []).append(a.start_ns)
    totals_ns = {name: 0 for _, _, name in windows}
    for work in activities:
        if not work.on_device or work.name in host_names.get(work.correlation, ()):
            continue
        launches = launched_at.get(work.correlation, [])
        if len(launches) != 1:
            found = "several API calls" if launches else "no API call"
            raise ModeUnavailable(f"the profiler linked device work {work.name[:80]!r} to {found}")
        at = bisect.bisect_right(starts, launches[0]) - 1
        if at >= 0 and launches[0] <= windows[at][1]:
            totals_ns[windows[at][2]] += work.duration_ns
    return {name: ns / 1e6 for name, ns in totals_ns.items()}


def kernel_batch(timed: list[Timed], first: int, count: int, flush: torch.Tensor | None) -> list[list[float]]:
    """One sample per call: the device time of the work the call launched, from one profiler session."""
    prefix = f"kbench.timed.{secrets.token_hex(8)}."  # unguessable: a solution cannot forge a range of ours

    def region(m: int, k: int, call: Callable[[], None]) -> None:
        with _record_function(f"{prefix}{k}.{m}"):
            call()

    with _profile(activities=_ACTIVITIES) as prof:
        each_call(timed, first, count, flush, region)
        _synchronize()  # work still running when the profiler stops would be lost
    # The raw records: torch.profiler's own event tree attaches a kernel to an operator only, and loses the
    # kernels an extension launches without one.
    totals = kernel_totals_ms(map(Activity.from_kineto, prof.profiler.kineto_results.events()), prefix)
    try:
        return [[totals[f"{prefix}{k}.{m}"] for k in range(count)] for m in range(len(timed))]
    except KeyError as exc:
        raise ModeUnavailable(f"torch.profiler recorded no range for timed call {exc}") from None


@contextmanager
def profiler_session(wanted: bool) -> Iterator[None]:
    """A torch.profiler session around the block when ``wanted`` (else nothing), synchronised before it ends."""
    if not wanted:
        yield
        return
    with _profile(activities=_ACTIVITIES):
        yield
        _synchronize()


def probe_kernels(timed: list[Timed], index: int, flush: torch.Tensor | None) -> None:
    """One untimed profiled round: raises ModeUnavailable when the profiler cannot attribute kernels here."""
    try:
        kernel_batch(timed, index, 1, flush)
    except ModeUnavailable:
        raise
    except Exception as exc:
        raise ModeUnavailable(f"torch.profiler cannot time device kernels here: {_describe(exc)}") from exc
