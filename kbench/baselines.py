"""Reference baseline timings (eager, and torch.compile), cached between runs in a ``JsonStore``.

Trusted side: only the parent reads and writes the cache. An entry is keyed by everything the numbers
depend on: the problem file's text, the sizes, the device's name, torch's version and the timing settings,
the timing mode among them (an events baseline is never reused for kernel timing). A warm ``bench --all``
therefore re-times no unchanged reference in full.

A cached time is not taken on trust (docs/timing.md, "The baseline cache's checks"). Each entry records how it
was measured (``Measured``); one measured badly, or by a kbench that did not record how, is not used
(``refusal``). Every entry that is used is checked against a short timing taken just now by the reference
worker that runs anyway for the outputs (``check_plan``); a cached time far slower than that check is an
outlier, and is measured again (``check_refusal``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kbench import __version__
from kbench.device_kind import on_gpu
from kbench.stats import median_ms, median_rse
from kbench.timing import TimingPlan

if TYPE_CHECKING:  # the reference worker imports this module: it need not load the configuration's pydantic
    from kbench.catalog import Problem
    from kbench.config import TimingConfig

# An entry whose eager median's relative standard error is over this many times timing.target_rse was timed on a
# host or device too unsteady to quote (the timing ran out of budget far from its target).
MAX_RSE_FACTOR = 4.0
# ... or timed on a host with more runnable work than CPUs, so the reference's threads (its kernel launches, on
# CUDA) waited for one. Where Linux says how long the timing worker's threads waited to run while it timed
# (/proc/self/task/*/schedstat), it is refused when they waited more than this share of the time they were ready
# to run: each of L runnable tasks on C busy CPUs waits 1 - C/L of it, so 0.25 is a load a third over the core
# count. Unlike the 1-minute load average, this covers the timing only, not the minute before it (kbench's own
# worker start-ups and solution timings among it).
MAX_CPU_WAIT = 0.25
# A timing shorter than this, in thread time (a configuration without a minimum time, as in the tests), is not
# judged by its wait: over a few milliseconds one preemption would decide it. Its spread still is (the rse).
MIN_SCHEDULED_S = 0.1
# Where Linux does not count the wait: refused when the host's 1-minute load average was over this many tasks per
# CPU.
MAX_LOAD_PER_CPU = 1.0
# The check of a cached time: at least CHECK_ROUNDS[0] and at most CHECK_ROUNDS[1] timed calls, stopping once
# CHECK_S has passed; its warm-up is cut to CHECK_S too. Against the full timing's 1-5 s, it costs little.
CHECK_ROUNDS = (3, 10)
CHECK_S = 0.1
# A cached median more than this fraction slower than the check's, beyond CHECK_NOISE_Z standard errors of the
# two medians together, is an outlier. A short check on a GPU that has not reached its power cap's steady state
# runs a few percent faster than a median over seconds (docs/timing.md, "Medians that move"); the bad
# entries were 50-85x too slow.
CHECK_ALLOWANCE = 0.25
CHECK_NOISE_Z = 3.0


@dataclass(frozen=True)
class Measured:
    """How a baseline's eager timing was taken: what a later run needs to judge whether to trust it."""

    rse: float | None  # the eager median's relative standard error (stats.median_rse); None: undefined
    samples: int  # eager timing rounds
    load: float | None  # the host's 1-minute load average, the higher of before and after timing; None: unknown
    cpus: int | None  # the host's CPUs (os.cpu_count), what the load is held against
    cpu_wait: float | None  # share of the timing threads' ready time spent waiting for a CPU; None: unknown
    scheduled_s: float | None  # the threads' time, running and waiting, that share is over; None: not counted
    at: str  # when it was stored (UTC)
    kbench: str  # kbench's version
    device: dict[str, Any] = field(default_factory=dict)  # CUDA: what NVML showed as the timing ended


@dataclass
class Baseline:
    eager_ms: list[float]  # samples
    compile_ms: list[float]  # samples; empty when not measured
    compile_error: str | None = None
    timing_mode: str | None = None  # the mode actually used: the requested one, or events after a fallback
    compile_timing_mode: str | None = None
    timing_notes: list[str] = field(default_factory=list)  # why a timing fell back
    # Elements of the reference's first outputs: a warm run can start its first solution worker before the
    # reference has run again (solution_starts.py). None in entries written before it was kept.
    output_numel: int | None = None
    # How eager_ms was measured. None in entries written before it was kept: those are measured again.
    measured: Measured | None = None

    def __post_init__(self) -> None:
        # Read back from JSON it is a dict; one of another shape raises TypeError, which JsonStore.get reads as
        # no entry (measured again).
        if isinstance(self.measured, dict):
            self.measured = Measured(**self.measured)
        elif self.measured is not None and not isinstance(self.measured, Measured):
            raise TypeError(f"measured: {self.measured!r}")


def baseline_key(
    problem: Problem, overrides: dict[str, Any], device_name: str, timing: dict[str, Any], compile_mode: str | None
) -> str:
    """``timing`` is the configuration's timing section; its ``mode`` is a part of the key of its own."""
    parts = [
        problem.path.read_text(encoding="utf-8", errors="replace"),
        json.dumps(overrides, sort_keys=True, default=str),
        device_name,
        torch.__version__,
        str(timing["mode"]),
        json.dumps({"timing": timing, "compile": compile_mode}, sort_keys=True, default=str),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def measured(eager_ms: Sequence[float], conditions: dict[str, Any]) -> Measured:
    """The record kept with a new entry; ``conditions`` is what the reference worker saw while timing
    (``timing_conditions``)."""
    rse = median_rse(eager_ms)
    load, cpus = conditions.get("load"), conditions.get("cpus")
    wait, scheduled = conditions.get("cpu_wait"), conditions.get("scheduled_s")
    return Measured(
        rse=rse if math.isfinite(rse) else None,
        samples=len(eager_ms),
        load=float(load) if isinstance(load, int | float) else None,
        cpus=int(cpus) if isinstance(cpus, int) else None,
        cpu_wait=float(wait) if isinstance(wait, int | float) else None,
        scheduled_s=float(scheduled) if isinstance(scheduled, int | float) else None,
        at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        kbench=__version__,
        device=dict(conditions.get("device") or {}),
    )


def refusal(entry: Baseline, timing: TimingConfig) -> str | None:
    """Why ``entry`` must not be used, from the entry alone; None when nothing in it speaks against it. The
    spread and the count come from the samples themselves, not from what the entry says of them."""
    record, samples = entry.measured, entry.eager_ms
    if record is None:
        return "it was written by a kbench that did not record how it was measured"
    fewest = min(timing.repeats, timing.max_repeats)  # what every timing takes, however it ends
    if len(samples) < fewest:
        return f"it holds {len(samples)} samples, fewer than the {fewest} any timing takes"
    rse, limit = median_rse(samples), MAX_RSE_FACTOR * timing.target_rse
    if not rse <= limit:  # also refuses NaN
        return f"its median's relative standard error was {rse:.2%}, over {MAX_RSE_FACTOR:g} x target_rse ({limit:.2%})"
    if record.scheduled_s is not None:  # Linux counted the threads' wait: that decides, over a long enough timing
        wait = record.cpu_wait or 0.0
        if record.scheduled_s >= MIN_SCHEDULED_S and wait > MAX_CPU_WAIT:
            return f"its timing threads waited for a CPU {wait:.0%} of the time they were ready to run"
    elif record.load is not None and record.cpus and record.load > MAX_LOAD_PER_CPU * record.cpus:
        return f"it was timed while the host's load average was {record.load:.2f} on {record.cpus} CPUs"
    return None


def check_plan(timing: dict[str, Any]) -> TimingPlan:
    """The short timing that checks a cached time: the configured mode, L2 flush and input sets, cut short."""
    plan = TimingPlan.from_dict(timing)
    return dataclasses.replace(
        plan,
        warmup_s=min(plan.warmup_s, CHECK_S),
        repeats=CHECK_ROUNDS[0],
        max_repeats=CHECK_ROUNDS[1],
        budget_s=CHECK_S,
        min_time_s=CHECK_S,  # rounds stop at CHECK_S or CHECK_ROUNDS[1], whichever first, never before 3
    )


def check_refusal(entry: Baseline, check_ms: Sequence[float], check_mode: str | None) -> str | None:
    """Why the check says ``entry``'s time alone is an outlier; None when it does not.

    Only a check faster than the cached time can convict it: nothing running beside the check (the references
    checked side by side, ``baselines.parallel``; a busy host) makes a call faster, so a check that is slower
    says as much about now as about the entry, and is no evidence. A cached time that is too fast is left to the
    drift judgement, which times the reference alone again before it rejects anything."""
    cached, now = median_ms(entry.eager_ms), median_ms(check_ms)
    if cached is None or now is None or now <= 0 or check_mode != entry.timing_mode:
        return None  # no check, or one in another mode (a graph that no longer captures): nothing to compare
    noise = math.hypot(median_rse(entry.eager_ms), median_rse(check_ms))
    allowed = CHECK_ALLOWANCE + CHECK_NOISE_Z * noise
    if not cached > now * (1 + allowed):
        return None
    return (
        f"the cache says {cached:.4g} ms, a check of {len(check_ms)} calls just now took {now:.4g} ms: "
        f"{cached / now:.3g}x faster, beyond the {allowed:.0%} that noise and drift allow"
    )


def host_now() -> dict[str, Any]:
    """What ``timing_conditions`` compares the end of a timing with: the load average, and how long this
    process's threads have run and waited to run so far."""
    return {"load": _load_average(), "sched": _scheduled_s()}


def timing_conditions(device: str, before: dict[str, Any]) -> dict[str, Any]:
    """What a reference worker records as its timing ends (``before``: ``host_now()`` as it began): the host's
    load and CPUs, the share of its threads' ready time spent waiting for a CPU, and on CUDA what NVML shows."""
    after = host_now()
    loads = [load for load in (before["load"], after["load"]) if load is not None]
    return {
        "load": max(loads) if loads else None,
        "cpus": os.cpu_count(),
        **_wait_share(before["sched"], after["sched"]),
        "device": _nvml_state(device),
    }


def _wait_share(before: tuple[float, float] | None, after: tuple[float, float] | None) -> dict[str, float | None]:
    """Waiting over waiting plus running, for this process's threads while it timed, and the thread time that is
    over; None for both where Linux did not count them."""
    if before is None or after is None:
        return {"cpu_wait": None, "scheduled_s": None}
    ran, waited = after[0] - before[0], after[1] - before[1]
    if ran < 0 or waited < 0:  # a thread that ended took its counts with it
        return {"cpu_wait": None, "scheduled_s": None}
    return {"cpu_wait": waited / (ran + waited) if ran + waited > 0 else None, "scheduled_s": ran + waited}


def _load_average() -> float | None:
    """The host's 1-minute load average: runnable (and uninterruptible) tasks, over all its CPUs."""
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def _scheduled_s() -> tuple[float, float] | None:
    """Seconds this process's threads have spent running, and runnable but waiting for a CPU (Linux's
    per-thread schedstat); None where it is not available. A thread that ends between two readings takes its
    share with it, which can only make the wait look shorter by that thread's part."""
    ran = waited = 0
    try:
        for path in Path("/proc/self/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError):  # a thread that just ended
                fields = path.read_text().split()
                ran, waited = ran + int(fields[0]), waited + int(fields[1])
    except OSError:
        return None
    return (ran / 1e9, waited / 1e9) if ran > 0 else None


def _nvml_state(device: str) -> dict[str, Any]:
    """GPU 0's clocks, temperature, power and slowdown reasons from NVML; empty on the CPU or without NVML. Only
    recorded, for whoever reads the cache: the check, not this, decides whether an entry is used."""
    if not on_gpu(device):
        return {}
    from kbench.metadata import nvml_session
    from kbench.monitor import SLOWDOWN_REASONS

    try:
        with nvml_session() as nvml:
            if nvml is None:
                return {}
            handle = nvml.nvmlDeviceGetHandleByIndex(0)
            reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            bits = int((reasons or nvml.nvmlDeviceGetCurrentClocksThrottleReasons)(handle))
            return {
                "sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
                "mem_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
                "temperature_c": nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
                "power_w": nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
                "throttle": [name for bit, name in SLOWDOWN_REASONS.items() if bits & bit],
            }
    except Exception as exc:  # a record for readers, never a reason to fail the reference
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
