"""Device state while a worker runs: NVML sampled from the trusted parent, in a background thread.

It records the device as the worker starts and after it has ended (SM and memory clocks, temperature, power);
in between, the range of SM and memory clocks, the mean SM clock while the GPU was busy, the peak temperature
and power, the throttle reasons seen (power cap, thermal or hardware slowdown), and GPU processes that are not
the worker's. From these come warnings that the job's timing may not be quotable. Without a GPU or NVML it
records nothing. Nothing it does can fail a job: a reading that fails is left out and said in ``error``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from kbench.metadata import nvml_session

SAMPLE_EVERY_S = 0.25
# NVML clocks-event (throttle) reason bits that mean the GPU was slowed; idle and app-clock bits are normal.
GPU_IDLE = 0x1
SLOWDOWN_REASONS = {
    0x4: "power cap",
    0x8: "hardware slowdown",
    0x20: "thermal (software)",
    0x40: "thermal (hardware)",
    0x80: "power brake",
}


@dataclass
class DeviceState:
    samples: int = 0
    before: dict[str, float] = field(default_factory=dict)  # the first reading, as the worker starts
    after: dict[str, float] = field(default_factory=dict)  # the last, once the worker has ended
    sm_clock_mhz_min: int | None = None
    sm_clock_mhz_max: int | None = None
    # The mean over readings NVML did not call idle: the clock the job's GPU work ran at. Min and max include
    # the idle clock of the worker's start, so they say nothing about two runs of a power-capped job.
    sm_clock_mhz_busy_mean: float | None = None
    busy_samples: int = 0
    mem_clock_mhz_min: int | None = None
    mem_clock_mhz_max: int | None = None
    temperature_c_max: int | None = None
    power_w_max: float | None = None
    throttle: list[str] = field(default_factory=list)
    other_processes: list[int] = field(default_factory=list)
    error: str | None = None

    def warnings(self) -> list[str]:
        found = []
        if self.throttle:
            reasons = ", ".join(self.throttle)
            found.append(f"GPU slowed during the job ({reasons}): timings may be longer than on an unthrottled GPU")
        if self.other_processes:
            found.append(f"other processes used the GPU during the job (pids {self.other_processes})")
        return found


def _reader(nvml: Any, index: int) -> Callable[[], dict[str, Any]]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)  # the job's GPU, by NVML's numbering
    # Newer NVML names the throttle reasons "clocks event reasons"; older ones only have the old name.
    reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    reasons = reasons or nvml.nvmlDeviceGetCurrentClocksThrottleReasons

    def read() -> dict[str, Any]:
        return {
            "sm_clock": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM),
            "mem_clock": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM),
            "temperature": nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
            "power": nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "reasons": int(reasons(handle)),
            "pids": [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)],
        }

    return read


def _widen(low: int | None, high: int | None, value: int) -> tuple[int, int]:
    """A range (low, high), or none yet, widened to take in value."""
    return (value, value) if low is None or high is None else (min(low, value), max(high, value))


class DeviceMonitor:
    """``with DeviceMonitor(enabled) as monitor:`` run a worker, telling ``monitor.worker_started(pid)``;
    afterwards ``monitor.state`` holds what NVML showed meanwhile."""

    def __init__(self, enabled: bool, index: int = 0) -> None:
        self.state = DeviceState()
        self._enabled = enabled
        self._index = index  # NVML's number of the GPU the job's workers see
        self._worker_groups: set[int] = set()  # the job's workers: the solution worker and its reference partner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def worker_started(self, pid: int) -> None:
        self._worker_groups.add(pid)  # workers lead their own process group

    def _is_worker(self, pid: int) -> bool:
        try:
            return os.getpgid(pid) in self._worker_groups
        except OSError:
            return False

    def __enter__(self) -> DeviceMonitor:
        if self._enabled:
            self._thread = threading.Thread(target=self._run, name="kbench-nvml", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            with nvml_session() as nvml:
                if nvml is None:
                    return
                read = _reader(nvml, self._index)
                self._add(read())
                while not self._stop.wait(SAMPLE_EVERY_S):
                    self._add(read())
                self._add(read())  # after the worker has ended
        except Exception as exc:  # the monitor only informs; it must never take a job down
            self.state.error = f"{type(exc).__name__}: {exc}"[:200]

    def _add(self, reading: dict[str, Any]) -> None:
        state = self.state
        snapshot = {
            "sm_clock_mhz": reading["sm_clock"],
            "mem_clock_mhz": reading["mem_clock"],
            "temperature_c": reading["temperature"],
            "power_w": reading["power"],
        }
        state.before = state.before or snapshot
        state.after = snapshot
        state.samples += 1
        clock = reading["sm_clock"]
        state.sm_clock_mhz_min, state.sm_clock_mhz_max = _widen(state.sm_clock_mhz_min, state.sm_clock_mhz_max, clock)
        state.mem_clock_mhz_min, state.mem_clock_mhz_max = _widen(
            state.mem_clock_mhz_min, state.mem_clock_mhz_max, reading["mem_clock"]
        )
        if not reading["reasons"] & GPU_IDLE:
            busy_total = (state.sm_clock_mhz_busy_mean or 0.0) * state.busy_samples + clock
            state.busy_samples += 1
            state.sm_clock_mhz_busy_mean = busy_total / state.busy_samples
        state.temperature_c_max = max(state.temperature_c_max or 0, reading["temperature"])
        state.power_w_max = max(state.power_w_max or 0.0, reading["power"])
        for bit, name in SLOWDOWN_REASONS.items():
            if reading["reasons"] & bit and name not in state.throttle:
                state.throttle.append(name)
        for pid in reading["pids"]:
            if pid != os.getpid() and not self._is_worker(pid) and pid not in state.other_processes:
                state.other_processes.append(pid)
