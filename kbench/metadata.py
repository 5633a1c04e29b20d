"""What machine and software a run used: recorded with every run so its numbers can be quoted."""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from kbench import __version__
from kbench.catalog import PACKAGE_DIR
from kbench.device_kind import on_gpu


def _git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def source_digest(root: Path = PACKAGE_DIR) -> str:
    """BLAKE2b of kbench's own Python files (its problems and solutions included), by path and content: names
    the code a run used where git cannot (a copy of the tree without its history, uncommitted changes)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" not in path.parts:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's ``model name`` where there is one (Linux; ``platform.processor()``
    is empty there), else ``platform.processor()`` (Windows, macOS), else the architecture. Not py-cpuinfo: it
    names the same model but takes about 1.6 s (it starts a subprocess); this takes well under 1 ms."""
    with suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115 - read lazily, stop early
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextmanager
def nvml_session() -> Iterator[Any]:
    """The NVML module, initialised, or None where there is no NVML (no GPU, no driver, no nvidia-ml-py)."""
    try:
        import pynvml
    except ImportError:
        yield None
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        yield None
        return
    try:
        yield pynvml
    finally:
        with suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def gpu_state() -> list[dict[str, Any]]:
    """Per-GPU name, driver, clocks, temperature and power from NVML; empty without a GPU or NVML."""
    gpus: list[dict[str, Any]] = []
    with nvml_session() as nvml:
        if nvml is None:
            return gpus
        driver = nvml.nvmlSystemGetDriverVersion()
        readings = {
            "sm_clock_mhz": lambda h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM),
            "mem_clock_mhz": lambda h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM),
            "max_sm_clock_mhz": lambda h: nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_SM),
            "max_mem_clock_mhz": lambda h: nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_MEM),
            "memory_bus_width_bits": lambda h: nvml.nvmlDeviceGetMemoryBusWidth(h),
            "temperature_c": lambda h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
            "power_w": lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "memory_total_bytes": lambda h: nvml.nvmlDeviceGetMemoryInfo(h).total,
        }
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            info: dict[str, Any] = {"index": index, "name": nvml.nvmlDeviceGetName(handle), "driver": driver}
            for key, read in readings.items():
                with suppress(nvml.NVMLError):
                    info[key] = read(handle)
            gpus.append(info)
    return gpus


def gpu_capability(index: int = 0) -> tuple[int, int] | None:
    """The GPU's compute capability from NVML: asking torch would open a CUDA context in the parent, which then
    holds GPU memory and shows in NVML as a process beside the job's workers. None without NVML."""
    with nvml_session() as nvml:
        if nvml is None:
            return None
        try:
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(nvml.nvmlDeviceGetHandleByIndex(index))
        except nvml.NVMLError:
            return None
        return int(major), int(minor)


def peak_memory_bandwidth() -> float | None:
    """Bytes per second the first GPU's memory can move at most (max memory clock x 2 for double data rate x
    bus width), from NVML; None without a GPU or NVML."""
    gpus = gpu_state()
    if not gpus or "max_mem_clock_mhz" not in gpus[0] or "memory_bus_width_bits" not in gpus[0]:
        return None
    return 2 * gpus[0]["max_mem_clock_mhz"] * 1e6 * gpus[0]["memory_bus_width_bits"] / 8


def collect(device: str, config: dict[str, Any], command: list[str]) -> dict[str, Any]:
    return {
        "kbench_version": __version__,
        "git": _git_commit(),
        "source_digest": source_digest(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": cpu_model(),
        "gpus": gpu_state() if on_gpu(device) else [],
        "config": config,
    }
