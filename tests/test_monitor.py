"""Device monitoring from the parent, with a stand-in for NVML (the real one needs a GPU)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from types import SimpleNamespace

from kbench import monitor
from kbench.monitor import DeviceMonitor, DeviceState


class FakeNvml:
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, readings: list[dict]) -> None:
        self.readings = readings
        self.index = 0

    def _now(self) -> dict:
        return self.readings[min(self.index, len(self.readings) - 1)]

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetClockInfo(self, handle: int, kind: int) -> int:
        return self._now()["clock" if kind == self.NVML_CLOCK_SM else "mem"]

    def nvmlDeviceGetTemperature(self, handle: int, kind: int) -> int:
        return self._now()["temp"]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._now()["mw"]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self._now()["reasons"]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list:
        self.index += 1
        return [SimpleNamespace(pid=pid) for pid in self._now()["pids"]]


def watch(readings: list[dict], monkeypatch, worker_pid: int | None = None) -> DeviceState:
    fake = FakeNvml(readings)

    @contextmanager
    def session():
        yield fake

    monkeypatch.setattr(monitor, "nvml_session", session)
    monkeypatch.setattr(monitor, "SAMPLE_EVERY_S", 0.01)
    with DeviceMonitor(enabled=True) as watching:
        if worker_pid is not None:
            watching.worker_started(worker_pid)
        time.sleep(0.3)
    return watching.state


def test_a_quiet_gpu_gives_readings_and_no_warning(monkeypatch):
    me = os.getpid()
    idle = {"clock": 1980, "mem": 2619, "temp": 40, "mw": 300_000, "reasons": 0x1, "pids": [me]}
    state = watch([idle], monkeypatch, me)
    assert state.samples > 5 and state.sm_clock_mhz_min == 1980 and state.power_w_max == 300.0
    assert state.mem_clock_mhz_min == state.mem_clock_mhz_max == 2619
    snapshot = {"sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "temperature_c": 40, "power_w": 300.0}
    assert state.before == state.after == snapshot
    assert state.sm_clock_mhz_busy_mean is None and state.busy_samples == 0  # NVML called every reading idle
    assert state.warnings() == []


def test_the_busy_clock_leaves_idle_readings_out_and_before_after_bracket_the_job(monkeypatch):
    def reading(clock: int, mem: int, temp: int, reasons: int) -> dict:
        return {"clock": clock, "mem": mem, "temp": temp, "mw": 400_000, "reasons": reasons, "pids": []}

    # Worker starting (idle), two busy readings, then idle again until the end (the last reading repeats).
    readings = [reading(345, 1593, 35, 0x1), reading(1700, 2619, 50, 0x4), reading(1900, 2619, 55, 0x0)]
    state = watch([*readings, reading(345, 1593, 45, 0x1)], monkeypatch)
    assert state.busy_samples == 2 and state.sm_clock_mhz_busy_mean == 1800
    assert (state.sm_clock_mhz_min, state.sm_clock_mhz_max) == (345, 1900)
    assert (state.mem_clock_mhz_min, state.mem_clock_mhz_max) == (1593, 2619)
    assert state.before["temperature_c"] == 35 and state.after["temperature_c"] == 45
    assert state.throttle == ["power cap"]


def test_throttling_and_strangers_on_the_gpu_are_warned_about(monkeypatch):
    readings = [
        {"clock": 1980, "mem": 2619, "temp": 60, "mw": 690_000, "reasons": 0x0, "pids": []},
        {"clock": 1410, "mem": 2619, "temp": 88, "mw": 700_000, "reasons": 0x4 | 0x20, "pids": [999_999]},
    ]
    state = watch(readings, monkeypatch)
    assert state.sm_clock_mhz_min == 1410 and state.sm_clock_mhz_max == 1980 and state.temperature_c_max == 88
    assert state.throttle == ["power cap", "thermal (software)"]
    assert state.other_processes == [999_999]
    assert len(state.warnings()) == 2


def test_a_failing_nvml_never_fails_the_job(monkeypatch):
    @contextmanager
    def broken():
        raise RuntimeError("driver went away")
        yield

    monkeypatch.setattr(monitor, "nvml_session", broken)
    with DeviceMonitor(enabled=True) as watching:
        time.sleep(0.05)
    assert "driver went away" in watching.state.error


def test_disabled_monitor_reads_nothing():
    with DeviceMonitor(enabled=False) as watching:
        pass
    assert watching.state == DeviceState()
