"""A worker's side of interleaved timing: one model's calls, each one only when the parent says so.

The parent (``kbench.turns``) times the reference and the solution in two processes and makes them take turns:
it lets one call of one model run, waits until that call and everything it launched have finished, then lets the
other model's call run. Nothing the solution does to its own process (threads, torch settings, the allocator,
CUDA flags) reaches the process that times the reference, and neither model's work overlaps the other's.

Every call gets inputs no earlier call saw: ``get_inputs()`` seeded by the round's index, made on the device
outside the timed region and before the L2 flush, so no answer can be remembered from an earlier call. Both
processes make the same inputs for the same round, so the parent can compare the outputs of the rounds it keeps.

Runs in both workers: the trusted reference partner and the untrusted solution worker. Messages are JSON lines.
From the parent: ``{"batch": [first, count]}`` (run those rounds; each call waits for ``{"go": k}``);
``{"keep": k, "slot": j}`` (keep round k's output in slot j, replacing what was there; sent right after its call:
the solution's worker stages it for the partner (``kbench.handoff``) and answers ``{"staged": layout}``; when it
cannot be staged, or the command says ``"file": true``, it saves it at once and answers ``{"kept": k}``); to the
trusted reference partner, next, ``{"keep": k, "slot": j, "adopt": layout or null}`` (keep a copy of its own
output on the device, and copy the solution's out of the staging buffer: ``{"kept": k}``, or ``{"refused": why}``,
after which the parent sends the solution ``{"save": k}``: save it to a file after all);
``{"setup": mode, "round": k}`` (after warm-up: capture graphs or probe the profiler, on round k's inputs);
``{"events": true}`` (fall back to events);
``{"finish": [rounds]}`` (the partner hands its copies of those rounds, its own and those it adopted, to its
``keep`` callbacks: ``kbench.reference_partner`` compares them, or saves them for the parent). From the worker
also: ``{"ready": true}``, ``{"done": k}``, ``{"setup": null or why not}`` and, after each batch,
``{"samples": [...]}``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from kbench import execution
from kbench.device_kind import on_gpu
from kbench.fingerprints import fingerprint, plain_tensors, same
from kbench.handoff import Adopter, HandoffError, Staging
from kbench.spec import WorkerSpec
from kbench.timing import _l2_flush_buffer, _time_batch, _time_batch_cpu
from kbench.timing_modes import ModeUnavailable, Sampler, Timed, capture_graphs, kernel_batch, probe_kernels

# Bound when kbench is imported, before any solution is (see timing.py).
_synchronize = torch.cuda.synchronize
_sleep = torch.cuda._sleep
_Event = torch.cuda.Event
_perf_counter = time.perf_counter
MIN_HOLD_S, MAX_HOLD_S = 100e-6, 20e-3


class GpuHold:
    """Keeps the GPU busy while the host launches a timed call, so the call's events time the GPU's work, not the
    host's launch latency. Each call starts on an idle GPU (the other worker's call has just finished), and the
    host needs tens of microseconds to enqueue the L2 flush, the start event and the call's kernels: with nothing
    queued, the GPU would wait for it inside the timed region. A spin kernel (``torch.cuda._sleep``) enqueued
    first, outside the timed region, lasts twice as long as the host took to launch the last call, so the flush
    and the call follow it without a gap; the same idea as nvbench's blocking kernel."""

    def __init__(self) -> None:
        start, end = _Event(enable_timing=True), _Event(enable_timing=True)
        start.record()
        _sleep(1_000_000)
        end.record()
        end.synchronize()
        self.cycles_per_s = 1_000_000 / max(start.elapsed_time(end) / 1e3, 1e-6)
        self.launch_s = 1e-3  # until the first call is measured
        self._released = 0.0

    def hold(self) -> None:
        seconds = min(max(2 * self.launch_s, MIN_HOLD_S), MAX_HOLD_S)
        _sleep(int(seconds * self.cycles_per_s))
        self._released = _perf_counter()

    def launched(self) -> None:
        """The call has been enqueued: follow a slower host at once, a faster one slowly."""
        self.launch_s = max(_perf_counter() - self._released, 0.9 * self.launch_s)


class TurnsEnded(Exception):
    """The parent closed the turn pipe: the other worker is gone, or the job ended."""


class TurnPipe:
    """The worker's end of its two turn pipes: commands in, replies out."""

    def __init__(self, command_fd: int, reply_fd: int) -> None:
        self._commands = os.fdopen(command_fd, "rb", buffering=0)
        self._reply_fd = reply_fd
        self._buffer = b""

    def next(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = self._commands.read(1 << 16)
            if not chunk:
                raise TurnsEnded("the parent closed the turn pipe")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def reply(self, **message: Any) -> None:
        data = memoryview((json.dumps(message) + "\n").encode())
        while data:
            data = data[os.write(self._reply_fd, data) :]


def _copy(output: Any) -> Any:
    """The output with every tensor cloned (on its device); anything else as it is (the parent rejects it)."""
    if isinstance(output, torch.Tensor):
        return output.detach().clone()
    if isinstance(output, list | tuple):
        return type(output)(_copy(item) for item in output)
    return output


@dataclass
class Served:
    """What the worker saw while it took its turns."""

    deferred: bool = False  # an output changed after its call had returned: work left running
    inputs_mutated: bool = False  # a call wrote into its inputs
    rounds: int = 0
    kept: list[int] = field(default_factory=list)  # the rounds whose outputs the parent compares, as it said last
    inputs_on: str = ""  # where the timed rounds' inputs were made (see execution.seeded_inputs)
    # The parent ended the turns before any round, the trials' answers being wrong already: the worker's steps
    # after the turns (perturbed trials, kernel census) cannot change its verdict, and are skipped.
    skipped: bool = False


@dataclass
class _Rounds:
    """One model's calls on fresh inputs, gated by the parent while ``gated``."""

    forward: Callable[..., Any]
    problem: ModuleType
    spec: WorkerSpec
    pipe: TurnPipe
    keep: Callable[[int, Any], None]  # (round, output): save a kept round's output for the parent
    watched: bool  # the solution: check its outputs and inputs around each call, hand kept outputs over at once
    discard: Callable[[int], None] = lambda index: None  # a round saved, then replaced in its slot: drop its file
    keep_adopted: Callable[[int, Any], None] = lambda index, output: None  # the partner: save an adopted output
    handoff: Staging | Adopter | None = None  # the solution stages kept outputs, the partner adopts them
    adopted: dict[int, tuple[int, Any]] = field(default_factory=dict)  # the partner: slot -> (round, the solution's)
    gated: bool = True
    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=lambda: [None])  # [latest output]; a graph's static output
    round: int = -1
    served: Served = field(default_factory=Served)
    _inputs_print: list[torch.Tensor] = field(default_factory=list)
    _static_inputs: list[Any] | None = None  # a captured graph reads these: fresh values are copied in
    _output_print: list[torch.Tensor] = field(default_factory=list)  # the latest output once its work was done
    kept: dict[int, tuple[int, Any]] = field(default_factory=dict)  # slot -> (round, a copy of its output)
    inputs_on: str = ""  # where get_inputs() makes them: the device, or the CPU after a failed graph capture
    hold: GpuHold | None = None  # on CUDA

    def __post_init__(self) -> None:
        self.inputs_on = self.inputs_on or self.spec.device

    def prepare(self, index: int) -> None:
        """Fresh inputs for round ``index``; into the graph's own input tensors when one was captured."""
        fresh = execution.seeded_inputs(self.problem, self.spec.timing_seed(index), self.spec.device, self.inputs_on)
        if self._static_inputs is not None:
            for static, value in zip(self._static_inputs, fresh, strict=True):
                if isinstance(static, torch.Tensor):
                    static.copy_(value)
            fresh = self._static_inputs
        self.inputs, self.round = fresh, index
        if self.watched:
            self._inputs_print = fingerprint(plain_tensors(self.inputs))

    def before(self, index: int) -> None:
        """Wait for the parent's go (saving a kept output meanwhile), then make this round's inputs."""
        while self.gated:
            command = self.pipe.next()
            if "keep" in command or "save" in command:
                self.on_keep(command)
            elif command.get("go") == index:
                break
            else:
                raise TurnsEnded(f"unexpected command {command} before round {index}")
        self.prepare(index)
        if self.hold is not None and self.gated:
            self.hold.hold()

    def call(self, index: int) -> None:
        self.outputs[0] = self.forward(*self.inputs)

    def after(self, index: int) -> None:
        """Wait for everything the call launched, check what it left, and hand the turn back."""
        if self.hold is not None and self.gated:
            self.hold.launched()
        early = fingerprint(plain_tensors(self.outputs[0])) if self.watched else []
        if on_gpu(self.spec.device):
            _synchronize()
        if self.watched:
            late = self._output_print = fingerprint(plain_tensors(self.outputs[0]))
            if not all(same(a, b) for a, b in zip(early, late, strict=True)):
                self.served.deferred = True
            inputs_now = fingerprint(plain_tensors(self.inputs))
            if not all(same(a, b) for a, b in zip(self._inputs_print, inputs_now, strict=True)):
                self.served.inputs_mutated = True
        self.served.rounds += 1
        if self.gated:
            self.pipe.reply(done=index)

    def on_keep(self, command: dict[str, Any]) -> None:
        """A ``keep`` (see the module's docstring), or the solution's ``save`` of a round the partner refused."""
        if "save" in command:
            index = int(command["save"])
            if not self.watched or index != self.round:
                raise TurnsEnded(f"asked to save round {index}, but the latest call was round {self.round}")
            self.keep(index, self.outputs[0])
            self.pipe.reply(kept=index)
            return
        index, slot = int(command["keep"]), int(command["slot"])
        if index != self.round or not 0 <= slot < self.spec.timing["checked_calls"]:
            raise TurnsEnded(f"asked to keep round {index} in slot {slot}, but the latest call was round {self.round}")
        if self.watched:
            self._hand_over(index, slot, staged=not command.get("file"))
        else:
            self._keep_copies(index, slot, command.get("adopt"))

    def _hand_over(self, index: int, slot: int, staged: bool) -> None:
        """The solution: its latest output, which must still be what it was when its call's work had finished (one
        changed since was finished in the background), leaves its process now: staged for the partner to copy out,
        or saved. A copy kept here until the turns end would be within reach of its later calls, which could
        write the right answer into it once they see that its round was kept."""
        now = fingerprint(plain_tensors(self.outputs[0]))
        if not all(same(a, b) for a, b in zip(self._output_print, now, strict=True)):
            self.served.deferred = True
        replaced = self.kept.get(slot)
        if replaced is not None:
            self.discard(replaced[0])
        self.kept[slot] = (index, None)
        layout = None
        if staged and isinstance(self.handoff, Staging):
            try:
                layout = self.handoff.stage(execution.pack_outputs(self.outputs[0], on_cpu=False))
            except HandoffError:
                self.handoff = None  # no staging here (no CUDA IPC, a file in the way): save every kept output
        if layout is None:
            self.keep(index, self.outputs[0])
            self.pipe.reply(kept=index)
        else:
            self.pipe.reply(staged={**layout, "round": index})

    def _keep_copies(self, index: int, slot: int, layout: Any) -> None:
        """The partner: a copy of its own output on the device (saved at the end, ``save_kept``: its float64
        record costs more than a call), and the solution's, copied out of the staging buffer."""
        own = _copy(self.outputs[0])
        self.kept[slot] = (index, own)
        self.adopted.pop(slot, None)
        if layout is not None:
            try:
                if not isinstance(self.handoff, Adopter):
                    raise HandoffError("this worker adopts nothing")
                like = execution.pack_outputs(own, on_cpu=False)["tensors"]
                self.adopted[slot] = (index, self.handoff.adopt(layout, like))
            except Exception as exc:  # whatever the solution staged makes fail is refused, never the partner's end
                self.pipe.reply(refused=f"{type(exc).__name__}: {exc}"[:500])
                return
        self.pipe.reply(kept=index)

    def save_kept(self, rounds: list[int]) -> None:
        """The partner: save its kept copies of ``rounds``, the parent's final sample, and the solution's outputs of
        those rounds that it adopted."""
        for index, output in self.kept.values():
            if index in rounds and output is not None:
                self.keep(index, output)
        for index, output in self.adopted.values():
            if index in rounds:
                self.keep_adopted(index, output)
        if isinstance(self.handoff, Adopter):
            self.handoff.close()

    def timed(self) -> Timed:
        return Timed(self.call, "solution" if self.watched else "reference", after=self.after, before=self.before)

    def capture(self, index: int, timed: Timed) -> Timed:
        """One CUDA graph on round ``index``'s input tensors; later rounds copy fresh values into them."""
        self.prepare(index)
        (replays,) = capture_graphs([replace(timed, outputs=self.outputs)], 1)
        self._static_inputs = self.inputs
        poison = replays.before

        def before(k: int) -> None:
            self.before(k)
            if poison is not None:
                poison(k)

        return replace(replays, before=before)


def _setup(rounds: _Rounds, mode: str, index: int, flush: torch.Tensor | None) -> tuple[Sampler, Timed]:
    """The sampler and calls for a CUDA-only mode, set up untimed on round ``index`` (raises ModeUnavailable)."""
    timed = rounds.timed()
    rounds.gated = False  # set-up calls are kbench's own, made while the other worker waits
    try:
        if mode == "graph":
            return _time_batch, rounds.capture(index, timed)
        probe_kernels([timed], index, flush)
        # The handoff copies through the CUDA driver API, whose device work the profiler links to no API call, so
        # the batch that copied would be refused (kernel_totals_ms); kept outputs go to files in this mode.
        rounds.handoff = None
        return kernel_batch, timed
    except ModeUnavailable:
        raise
    except Exception as exc:
        raise ModeUnavailable(f"{mode} timing cannot be set up here: {type(exc).__name__}: {exc}") from exc
    finally:
        rounds.gated = True
        if on_gpu(rounds.spec.device):
            _synchronize()


def serve(
    forward: Callable[..., Any],
    problem: ModuleType,
    spec: WorkerSpec,
    pipe: TurnPipe,
    keep: Callable[[int, Any], None],
    watched: bool,
    discard: Callable[[int], None] = lambda index: None,
    keep_adopted: Callable[[int, Any], None] = lambda index, output: None,
    check: Callable[[], bool | None] | None = None,
) -> Served:
    """Take turns as the parent commands until it says finish (returns) or closes the pipe (TurnsEnded). ``check``
    (the partner's): asked before the turns whether the solution's trials are wrong already (None: not known)."""
    cuda = on_gpu(spec.device)
    folder = Path(spec.out_dir)
    handoff = Staging(spec.device, folder) if watched else Adopter(spec.device, folder)
    rounds = _Rounds(
        forward, problem, spec, pipe, keep, watched, discard, keep_adopted, handoff, hold=GpuHold() if cuda else None
    )
    events: tuple[Sampler, Timed] = (_time_batch if cuda else _time_batch_cpu, rounds.timed())
    sampler, timed = events
    flush = _l2_flush_buffer() if cuda and spec.timing.get("flush_l2", True) else None
    pipe.reply(ready=True)
    with torch.no_grad():
        while True:
            command = pipe.next()
            if "batch" in command:
                first, count = (int(v) for v in command["batch"])
                pipe.reply(samples=sampler([timed], first, count, flush)[0])
            elif "keep" in command or "save" in command:
                rounds.on_keep(command)
            elif "setup" in command:
                try:
                    sampler, timed = _setup(rounds, str(command["setup"]), int(command["round"]), flush)
                    pipe.reply(setup=None)
                except ModeUnavailable as exc:
                    pipe.reply(setup=str(exc))
            elif "events" in command:
                sampler, timed = events
                # A failed capture can leave the CUDA generator unusable outside a capture ("Offset increment
                # outside graph capture"): both workers make the rest of their inputs on the CPU, alike.
                rounds._static_inputs, rounds.inputs_on = None, "cpu"
                pipe.reply(setup=None)
            elif "check" in command and check is not None:
                pipe.reply(checked=check())
            elif "finish" in command:
                rounds.served.skipped = bool(command.get("skip"))
                rounds.served.kept = [int(k) for k in command["finish"]]
                rounds.save_kept(rounds.served.kept)
                rounds.served.inputs_on = rounds.inputs_on
                return rounds.served
            else:
                raise TurnsEnded(f"unknown command {sorted(command)}")
