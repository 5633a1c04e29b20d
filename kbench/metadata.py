"""What machine and software a run used: recorded with every run so its numbers can be quoted."""

from __future__ import annotations

import datetime as dt
import platform
import socket
import subprocess
import sys
from contextlib import suppress
from typing import Any

import torch

from kbench import __version__
from kbench.catalog import PACKAGE_DIR


def _git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpu_model() -> str:
    with suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115 - read lazily, stop early
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_state() -> list[dict[str, Any]]:
    """Per-GPU name, driver, clocks, temperature and power from NVML; empty without a GPU or NVML."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    gpus = []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            info: dict[str, Any] = {"index": index, "name": pynvml.nvmlDeviceGetName(handle), "driver": driver}
            readings = {
                "sm_clock_mhz": lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "mem_clock_mhz": lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                "max_sm_clock_mhz": lambda h: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                "temperature_c": lambda h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                "power_w": lambda h: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
                "memory_total_bytes": lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).total,
            }
            for key, read in readings.items():
                with suppress(pynvml.NVMLError):
                    info[key] = read(handle)
            gpus.append(info)
    finally:
        with suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    return gpus


def collect(device: str, config: dict[str, Any], command: list[str]) -> dict[str, Any]:
    return {
        "kbench_version": __version__,
        "git": _git_commit(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": _cpu_model(),
        "gpus": gpu_state() if device.startswith("cuda") else [],
        "config": config,
    }
