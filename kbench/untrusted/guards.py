"""UNTRUSTED: in-process integrity checks the solution worker runs around the solution's code.

They run in the same process as the solution, so a determined solution could defeat them; they are one
layer of several. The trusted parent compares every output itself, and the static scan gives a second
opinion. Each check records a flag; the parent turns integrity flags into the ``rejected`` verdict.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kbench.device_kind import on_gpu
from kbench.fingerprints import fingerprint, plain_tensors, same

# Functions kbench times with. Replacing any of them is timer tampering.
TIMER_PATHS = (
    "time.perf_counter",
    "time.perf_counter_ns",
    "time.monotonic",
    "torch.cuda.synchronize",
    "torch.cuda.Event",
    "torch.cuda.Event.record",
    "torch.cuda.Event.elapsed_time",
    "torch.cuda.Event.synchronize",
    "torch.cuda.Event.query",
    "torch.cuda.current_stream",
    "torch.cuda.Stream.synchronize",
    # graph and kernel timing (kbench.timing_modes)
    "torch.cuda.Stream",
    "torch.cuda.Stream.wait_stream",
    "torch.cuda.stream",
    "torch.cuda.graph",
    "torch.cuda.CUDAGraph",
    "torch.cuda.CUDAGraph.capture_begin",
    "torch.cuda.CUDAGraph.capture_end",
    "torch.cuda.CUDAGraph.replay",
    "torch.profiler.profile",
    "torch.profiler.record_function",
)
# Functions a solution has no business replacing: comparisons, the harness, the problem's own definitions.
# All of torch's public functions, Tensor methods and nn modules are watched as well (see _torch_namespaces).
PATCH_PATHS = (
    "torch.testing.assert_close",
    "kbench.execution.save_outputs",
    "kbench.execution.save_record",
    "kbench.channel.Channel.write_announced",
    "kbench.tensor_files.encode",
    "kbench.execution.pack_outputs",
    "kbench.execution.seeded_inputs",
    "kbench.channel.Channel.send",
    "kbench.timing.time_models",
    "kbench.untrusted.guards.Guards.check",
    "kbench.untrusted.guards.CallWatch.call",
    # which ModelNew tensor gets each reference weight: a replaced matching could dodge the weight checks
    "kbench.weights.match_state",
    "kbench.weights.copy_reference_weights",
    "kbench.weights.StateMap.copy_in",
    "kbench_problem.Model",
    "kbench_problem.get_inputs",
    "kbench_problem.get_init_inputs",
)
# kbench's own modules in the solution's process: every function, class member and constant in them is watched
# as well (see _kbench_namespaces), so a solution cannot switch a check off by replacing what it calls, a
# fingerprint comparison that always says "unchanged", say. Checks made in this process can still be defeated
# below Python; the ones that decide a verdict (outputs, timing turns) are made by the parent.
KBENCH_MODULES = (
    "kbench.channel",
    "kbench.cuda_driver",
    "kbench.execution",
    "kbench.fingerprints",
    "kbench.handoff",
    "kbench.spec",
    "kbench.tensor_files",
    "kbench.timing",
    "kbench.timing_modes",
    "kbench.turn_taker",
    "kbench.weights",
    "kbench.untrusted.census",
    "kbench.untrusted.guards",
)
# torch rewraps these itself (torch._dynamo, on first import and on torch.compile), and none runs inside a
# forward call; kbench seeds through its own reference to manual_seed (see execution.py).
TORCH_REWRAPS = frozenset({"torch.manual_seed", "torch.nn.Module.__init__", "torch.nn.Module.__setstate__"})


def _torch_namespaces() -> dict[str, Any]:
    """Every callable in torch's main namespaces and every attribute of Tensor and the nn modules: a solution
    that replaces one could change what the reference computes, or how fast it runs beside the solution."""
    import torch.nn.functional

    found: dict[str, Any] = {}
    for module in (torch, torch.nn.functional, torch.linalg, torch.special, torch.fft, torch.nn.init):
        for name, value in vars(module).items():
            if callable(value):
                found[f"{module.__name__}.{name}"] = value
    classes = [torch.Tensor] + [
        c for c in vars(torch.nn).values() if isinstance(c, type) and issubclass(c, torch.nn.Module)
    ]
    for cls in classes:
        owner = "torch.Tensor" if cls is torch.Tensor else f"torch.nn.{cls.__name__}"
        for name, value in vars(cls).items():
            found[f"{owner}.{name}"] = value
    return {path: value for path, value in found.items() if path not in TORCH_REWRAPS}


def _kbench_namespaces() -> dict[str, Any]:
    """Every attribute of KBENCH_MODULES, and every member of the classes they define."""
    found: dict[str, Any] = {}
    for name in KBENCH_MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.startswith("__"):
                continue
            found[f"{name}.{attr}"] = value
            if isinstance(value, type) and value.__module__ == name:
                for member, inner in vars(value).items():
                    if not member.startswith("__"):
                        found[f"{name}.{attr}.{member}"] = inner
    return found


def _replaced(before: dict[str, tuple[Any, Any]], now: dict[str, Any]) -> list[str]:
    """The paths whose object is another now, or a function whose code is another (``f.__code__ = ...`` keeps
    the object and changes what it does)."""
    return [path for path, (obj, code) in before.items() if now.get(path) is not obj or _code(obj) is not code]


def _code(obj: Any) -> Any:
    return getattr(obj, "__code__", None)


def _snapshot(objects: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {path: (obj, _code(obj)) for path, obj in objects.items()}


def _resolve(path: str) -> Any:
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def torch_settings() -> dict[str, str]:
    """torch's process-wide settings that change how fast or how exactly work runs. Changing them affects the
    solution's own process only (the reference is timed in another), but a result should say it happened."""
    backends = torch.backends
    readings: dict[str, Callable[[], object]] = {
        "torch.get_num_threads()": torch.get_num_threads,
        "torch.get_num_interop_threads()": torch.get_num_interop_threads,
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision,
        "torch.get_default_dtype()": torch.get_default_dtype,
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled,
        "torch.backends.cuda.matmul.allow_tf32": lambda: backends.cuda.matmul.allow_tf32,
        "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction": (
            lambda: backends.cuda.matmul.allow_fp16_reduced_precision_reduction
        ),
        "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction": (
            lambda: backends.cuda.matmul.allow_bf16_reduced_precision_reduction
        ),
        "torch.backends.cudnn.enabled": lambda: backends.cudnn.enabled,
        "torch.backends.cudnn.benchmark": lambda: backends.cudnn.benchmark,
        "torch.backends.cudnn.deterministic": lambda: backends.cudnn.deterministic,
        "torch.backends.cudnn.allow_tf32": lambda: backends.cudnn.allow_tf32,
        "os.sched_getaffinity(0)": lambda: sorted(os.sched_getaffinity(0)),
    }
    found = {}
    for name, read in readings.items():
        try:
            found[name] = str(read())
        except Exception as exc:  # a setting this build lacks, or a reader the solution broke: both are news
            found[name] = f"unreadable ({type(exc).__name__})"
    return found


class Guards:
    """Remembers the timing and comparison functions, and torch's settings, before the solution is imported;
    ``check`` says which were replaced since, ``changed_settings`` which settings changed."""

    def __init__(self) -> None:
        self._timers = {path: _resolve(path) for path in TIMER_PATHS}
        self._patches = _snapshot({path: _resolve(path) for path in PATCH_PATHS})
        self._torch = _torch_namespaces()
        self._kbench = _snapshot(_kbench_namespaces())
        self._settings = torch_settings()

    def changed_settings(self) -> list[str]:
        now = torch_settings()
        return [f"{name}: {self._settings[name]} -> {now[name]}" for name in now if now[name] != self._settings[name]]

    def check(self) -> tuple[list[str], list[str]]:
        """(flags, replaced paths)."""
        flags, replaced = [], []
        timers = [path for path, obj in self._timers.items() if _resolve(path) is not obj]
        now = _torch_namespaces()
        patched = _replaced(self._patches, {path: _resolve(path) for path in self._patches})
        patched += [path for path, obj in self._torch.items() if path not in self._timers and now.get(path) is not obj]
        patched += [path for path in _replaced(self._kbench, _kbench_namespaces()) if path not in patched]
        for flag, changed in (("timer_tampering", timers), ("monkey_patch", patched)):
            if changed:
                flags.append(flag)
                replaced.extend(changed)
        return flags, replaced


def _native_threads() -> dict[int, str]:
    """This process's threads by id, with their names: the kernel's (``/proc/self/task``), which counts threads
    that native code started; Python's own where there is no /proc."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return {thread.ident or 0: thread.name for thread in threading.enumerate()}
    names = {}
    for task in tasks:
        with contextlib.suppress(OSError):  # it ended meanwhile
            names[int(task)] = Path(f"/proc/self/task/{task}/comm").read_text().strip()
    return names


@dataclass
class CallWatch:
    """Watches each checked forward call: inputs changed, outputs aliased or reused, work left running."""

    device: str
    poison_numel: int = 0
    flags: set[str] = field(default_factory=set)
    new_threads: set[str] = field(default_factory=set)  # names of the threads behind a "thread" flag
    _previous_outputs: list[torch.Tensor] = field(default_factory=list)
    _thread_baseline: dict[int, str] | None = None

    def poison(self) -> None:
        """Fill memory the allocator will hand out next with NaN, so an output left partly unwritten shows."""
        if self.poison_numel > 0:
            filler = torch.full((self.poison_numel,), float("nan"), device=self.device)
            del filler

    def call(self, forward: Callable[..., Any], inputs: list[Any]) -> Any:
        pristine = [v.clone() if isinstance(v, torch.Tensor) else v for v in inputs]
        python_threads = set(threading.enumerate())
        with torch.no_grad():
            output = forward(*inputs)
        outputs = plain_tensors(output)
        early = fingerprint(outputs)
        if on_gpu(self.device):
            torch.cuda.synchronize()
        else:
            time.sleep(0.02)  # a background thread still writing the output shows within this window
        late = fingerprint(outputs)
        if not all(same(a, b) for a, b in zip(early, late, strict=True)):
            self.flags.add("side_stream" if on_gpu(self.device) else "thread")
        self._check_threads(python_threads)
        self._check_inputs(inputs, pristine)
        self._check_aliasing(outputs, inputs)
        return output

    def _check_threads(self, python_threads: set[threading.Thread]) -> None:
        """Thread pools start on the first call (torch's, Triton's, Inductor's while it compiles): threads started
        there count as the solution's own from before, as those it starts when imported do, and only threads added
        by a later call are flagged. What any thread does to the outputs shows in the fingerprints; its CPU time
        beside the reference, as ``background_work``."""
        threads = _native_threads()
        if self._thread_baseline is None:
            self._thread_baseline = threads
            return
        alive = set(threading.enumerate())
        if len(alive) > len(python_threads):
            self.flags.add("thread")
            self.new_threads.update(thread.name for thread in alive - python_threads)
        if len(threads) > len(self._thread_baseline):
            self.flags.add("thread")
            self.new_threads.update(name for tid, name in threads.items() if tid not in self._thread_baseline)

    def check_inputs_unchanged(self, input_sets: list[list[Any]], pristine: list[list[Any]]) -> None:
        """After timing: the solution's own input sets must be as they were made."""
        for inputs, before in zip(input_sets, pristine, strict=True):
            self._check_inputs(inputs, before)

    def _check_inputs(self, inputs: list[Any], pristine: list[Any]) -> None:
        for now, before in zip(inputs, pristine, strict=True):
            if isinstance(now, torch.Tensor) and (now.shape != before.shape or not same(now, before)):
                self.flags.add("input_mutated")

    def _check_aliasing(self, outputs: list[torch.Tensor], inputs: list[Any]) -> None:
        input_storages = {v.untyped_storage().data_ptr() for v in inputs if isinstance(v, torch.Tensor)}
        earlier = {t.untyped_storage().data_ptr() for t in self._previous_outputs}
        for tensor in outputs:
            storage = tensor.untyped_storage().data_ptr()
            if tensor.numel() and storage in input_storages:
                self.flags.add("output_aliases_input")
            if tensor.numel() and storage in earlier:
                self.flags.add("output_reused")
        self._previous_outputs.extend(outputs)  # kept alive, so a reused buffer cannot be a fresh allocation
