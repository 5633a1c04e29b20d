"""The CUDA driver API through ctypes, for what torch does not expose: device memory shared between processes
(``kbench.handoff``) and a start of the driver alone, without torch's runtime state (``kbench.untrusted.worker``)."""

from __future__ import annotations

import ctypes
import functools
from typing import Any

DevicePointer = ctypes.c_uint64
HANDLE_BYTES = 64  # sizeof(CUipcMemHandle)


class DriverError(Exception):
    """No driver library, or a driver call that failed (its error's name in the message)."""


class IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * HANDLE_BYTES)]


@functools.cache
def driver() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise DriverError(f"no CUDA driver library: {exc}") from exc
    pointer, size = ctypes.POINTER(DevicePointer), ctypes.POINTER(ctypes.c_size_t)
    signatures: dict[str, list[Any]] = {
        "cuInit": [ctypes.c_uint],
        "cuDeviceGetCount": [ctypes.POINTER(ctypes.c_int)],
        "cuMemAlloc_v2": [pointer, ctypes.c_size_t],
        "cuIpcGetMemHandle": [ctypes.POINTER(IpcHandle), DevicePointer],
        "cuIpcOpenMemHandle_v2": [pointer, IpcHandle, ctypes.c_uint],
        "cuIpcCloseMemHandle": [DevicePointer],
        "cuMemGetAddressRange_v2": [pointer, size, DevicePointer],
        "cuMemcpyDtoD_v2": [DevicePointer, DevicePointer, ctypes.c_size_t],
        "cuCtxSynchronize": [],
        "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return lib


def call(name: str, *args: Any) -> None:
    status = getattr(driver(), name)(*args)
    if status != 0:
        text = ctypes.c_char_p()
        driver().cuGetErrorName(status, ctypes.byref(text))
        raise DriverError(f"{name} failed: {(text.value or b'').decode() or status}")


def device_count() -> int:
    """Start the driver (``cuInit``) and count the devices this process sees; raises ``DriverError``."""
    call("cuInit", 0)
    count = ctypes.c_int(0)
    call("cuDeviceGetCount", ctypes.byref(count))
    return count.value
