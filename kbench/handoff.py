"""Kept timed outputs handed from the solution's worker to the trusted reference partner (CUDA IPC on the GPU).

Why: a kept output left in the solution's process until the turns end is within reach of its later calls, which
could write the right answer into it once they see that its round was kept. Saving each to a file as it is kept
closes that, but costs a copy to the host, a hash and a write per keep (about twenty in a second of timing, most of
the turns' time on large outputs). Instead the worker copies the kept output into a staging buffer of its own that
it exported once (``Staging``), and the partner, which imported that buffer, copies it into memory only it holds
(``Adopter``) before the parent lets the solution make another call. The partner then compares the final sample
itself (``kbench.timed_comparison``), or saves it for the parent.

Everything the worker says about the buffer comes from the untrusted process, so the partner checks it: the handle
opens, the tensors are of torch's dtypes and of the reference output's shapes (which also bounds what the partner
allocates), and each lies inside the imported allocation. A layout it refuses is not the reference's failure: the
parent then has the worker save that output to a file, as it did before (``kbench.turns``).

On the GPU the buffer is device memory shared through the CUDA driver API (ctypes), not torch's IPC:
``UntypedStorage._new_shared_cuda`` also opens a shared reference-count file named by the exporter, which the
trusted side would then take from the solution. On the CPU it is a file in the job's folder that both map, named
``stage-N.buf`` (the "handle" is that name, NUL-padded to the driver handle's 64 bytes).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import stat
from pathlib import Path
from typing import Any

import torch

from kbench import cuda_driver
from kbench.cuda_driver import HANDLE_BYTES, DevicePointer, IpcHandle
from kbench.device_kind import on_gpu

ALIGN = 256  # each staged tensor starts at a multiple of this, as cudaMalloc's own allocations do
MAX_TENSORS = 64  # an output of more is saved to a file: the layout travels in one reply line
CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1
STAGING_FILE = re.compile(r"stage-[0-9]{1,6}\.buf")
# Bound when kbench is imported, before any solution is (see timing.py).
_synchronize = torch.cuda.synchronize


class HandoffError(Exception):
    """The handoff cannot be used here (no driver, no IPC), or the partner refuses what the worker staged."""


def ipc_handle(raw: bytes) -> IpcHandle:
    """The driver's handle from its 64 bytes. Not ``IpcHandle(raw)``: that copies a c_char array only up to its
    first NUL byte, and the driver refused the handle so made (CUDA_ERROR_INVALID_VALUE, on an H100)."""
    return IpcHandle.from_buffer_copy(raw)


def _call(name: str, *args: Any) -> None:
    try:
        cuda_driver.call(name, *args)
    except cuda_driver.DriverError as exc:
        raise HandoffError(str(exc)) from exc


def _copy(destination: int, source: int, nbytes: int) -> None:
    """Device to device on the legacy default stream, which waits for the device's other work; the caller
    synchronizes before it trusts the copy."""
    if nbytes:
        _call("cuMemcpyDtoD_v2", destination, source, nbytes)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


class _DeviceBuffer:
    """The worker's staging memory on the GPU, exported over CUDA IPC."""

    device_type = "cuda"

    def __init__(self) -> None:
        self._pointer = 0
        # Buffers outgrown stay allocated until the process ends: the partner may still hold one open, and
        # freeing memory another process has imported is undefined (cuIpcOpenMemHandle's documentation).
        self._outgrown: list[int] = []

    def allocate(self, size: int) -> bytes:
        pointer, handle = DevicePointer(), IpcHandle()
        _call("cuMemAlloc_v2", ctypes.byref(pointer), size)
        _call("cuIpcGetMemHandle", ctypes.byref(handle), pointer)
        if self._pointer:
            self._outgrown.append(self._pointer)
        self._pointer = pointer.value
        return bytes(handle)

    def begin(self) -> None:
        _synchronize()  # the call's work, on whatever streams it used, and the copies to contiguous, are done

    def write(self, offset: int, tensor: torch.Tensor) -> None:
        _copy(self._pointer + offset, tensor.data_ptr(), tensor.numel() * tensor.element_size())

    def end(self) -> None:
        _call("cuCtxSynchronize")


class _FileBuffer:
    """The worker's staging memory on the CPU: a file in the job's folder, mapped shared."""

    device_type = "cpu"

    def __init__(self, folder: Path) -> None:
        self._folder, self._maps = folder, []  # outgrown maps stay, like outgrown device buffers
        self._view = torch.empty(0, dtype=torch.uint8)

    def allocate(self, size: int) -> bytes:
        name = f"stage-{len(self._maps)}.buf"
        try:
            fd = os.open(self._folder / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.ftruncate(fd, size)
                mapping = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise HandoffError(f"no staging file: {exc}") from exc
        self._maps.append(mapping)
        self._view = torch.frombuffer(mapping, dtype=torch.uint8)
        return name.encode().ljust(HANDLE_BYTES, b"\0")

    def begin(self) -> None:
        pass

    def write(self, offset: int, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        self._view[offset : offset + nbytes].view(tensor.dtype).copy_(tensor.reshape(-1))

    def end(self) -> None:
        pass


class Staging:
    """The solution's side: one buffer exported once, into which each kept output is copied. Runs in the untrusted
    process, so it only ever makes work for the partner, which checks everything."""

    def __init__(self, device: str, folder: Path) -> None:
        self._buffer = _DeviceBuffer() if on_gpu(device) else _FileBuffer(folder)
        self._size, self._handle = 0, ""

    def stage(self, packed: dict[str, Any]) -> dict[str, Any] | None:
        """Copy a packed output (``execution.pack_outputs(..., on_cpu=False)``) into the buffer and describe it for
        the partner; None when it cannot be staged (not plain tensors on this worker's device, too many), to be
        saved as a file."""
        tensors, buffer = packed["tensors"], self._buffer
        if "not_tensor" in packed or len(tensors) > MAX_TENSORS:
            return None
        if not all(t.device.type == buffer.device_type for t in tensors):
            return None
        buffer.begin()
        contiguous = [t.contiguous() for t in tensors]
        offsets, end = [], 0
        for tensor in contiguous:
            offsets.append(_aligned(end))
            end = offsets[-1] + tensor.numel() * tensor.element_size()
        if end > self._size:
            self._size = _aligned(max(end, 1))
            self._handle = buffer.allocate(self._size).hex()
        buffer.begin()
        for tensor, offset in zip(contiguous, offsets, strict=True):
            buffer.write(offset, tensor)
        buffer.end()
        described = [
            {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "offset": offset}
            for t, offset in zip(contiguous, offsets, strict=True)
        ]
        return {"handle": self._handle, "structure": packed["structure"], "tensors": described}


def _dtype(name: Any) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise HandoffError(f"{name!r} is not a torch dtype")
    return dtype


def read_layout(layout: Any, like: list[torch.Tensor]) -> tuple[bytes, str, list[tuple[torch.dtype, list[int], int]]]:
    """The handle, structure and (dtype, shape, offset) of each tensor of a staged output, checked against the
    reference's output of the same round (``like``): same number of tensors, same shapes, at most 8 bytes an
    element. Raises HandoffError; the range inside the buffer is checked once it is open (``Adopter``)."""
    if not isinstance(layout, dict) or not isinstance(layout.get("tensors"), list):
        raise HandoffError("the layout is not an object with a list of tensors")
    try:
        handle = bytes.fromhex(layout.get("handle", ""))
    except (TypeError, ValueError):
        handle = b""
    if len(handle) != HANDLE_BYTES:
        raise HandoffError("the handle is not 64 bytes in hex")
    structure, items = layout.get("structure"), layout["tensors"]
    if structure not in ("tensor", "sequence") or (structure == "tensor" and len(items) != 1):
        raise HandoffError(f"structure {structure!r} with {len(items)} tensors")
    if len(items) != len(like):
        raise HandoffError(f"{len(items)} tensors where the reference returned {len(like)}")
    read = []
    for item, reference in zip(items, like, strict=True):
        if not isinstance(item, dict):
            raise HandoffError(f"a tensor described as {type(item).__name__}")
        shape, offset = item.get("shape"), item.get("offset")
        if shape != list(reference.shape) or not all(type(d) is int for d in shape):
            raise HandoffError(f"shape {shape!r} where the reference's is {list(reference.shape)}")
        dtype = _dtype(item.get("dtype"))
        if dtype.itemsize > 8 or type(offset) is not int or offset < 0:
            raise HandoffError(f"dtype {dtype} at offset {offset!r}")
        read.append((dtype, shape, offset))
    return handle, structure, read


class _DeviceImport:
    """The partner's view of the worker's staging memory on the GPU."""

    def __init__(self) -> None:
        self._base = 0

    def open(self, handle: bytes) -> int:
        """Map the buffer; the bytes a staged tensor may read from its start."""
        pointer, base, size = DevicePointer(), DevicePointer(), ctypes.c_size_t()
        _call("cuIpcOpenMemHandle_v2", ctypes.byref(pointer), ipc_handle(handle), CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS)
        try:
            _call("cuMemGetAddressRange_v2", ctypes.byref(base), ctypes.byref(size), pointer)
        except HandoffError:
            _call("cuIpcCloseMemHandle", pointer)
            raise
        self._base = pointer.value
        # The range from the opened pointer to the end of its allocation is all a staged tensor may read.
        return base.value + size.value - pointer.value

    def read(self, copies: list[torch.Tensor], offsets: list[int]) -> None:
        _synchronize()  # the copies' memory is free of the work that used it before
        for copy, offset in zip(copies, offsets, strict=True):
            _copy(copy.data_ptr(), self._base + offset, copy.numel() * copy.element_size())
        _call("cuCtxSynchronize")

    def close(self) -> None:
        _call("cuIpcCloseMemHandle", self._base)


class _FileImport:
    """The partner's view of the worker's staging file: a private copy-on-write map, so nothing it does reaches
    the file."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._map: mmap.mmap | None = None

    def open(self, handle: bytes) -> int:
        name = handle.rstrip(b"\0").decode("ascii", "replace")
        if not STAGING_FILE.fullmatch(name):
            raise HandoffError(f"{name!r} names no staging file")
        try:
            # Not following a link, and not waiting on a FIFO for a writer that never comes.
            fd = os.open(self._folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode) or not status.st_size:
                    raise HandoffError(f"{name} is not a staging file")
                self._map = mmap.mmap(fd, status.st_size, access=mmap.ACCESS_COPY)
            finally:
                os.close(fd)
        except OSError as exc:
            raise HandoffError(f"{name}: {exc}") from exc
        return status.st_size

    def read(self, copies: list[torch.Tensor], offsets: list[int]) -> None:
        view = torch.frombuffer(self._map, dtype=torch.uint8) if self._map is not None else torch.empty(0)
        for copy, offset in zip(copies, offsets, strict=True):
            nbytes = copy.numel() * copy.element_size()
            copy.copy_(view[offset : offset + nbytes].view(copy.dtype).reshape(copy.shape))
        del view  # the map cannot close while a tensor shows it

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


class Adopter:
    """The trusted partner's side: imports the worker's buffer and copies each staged output out of it."""

    def __init__(self, device: str, folder: Path) -> None:
        self._import = _DeviceImport() if on_gpu(device) else _FileImport(folder)
        self._handle, self._size = b"", 0

    def adopt(self, layout: Any, like: list[torch.Tensor]) -> Any:
        """The staged output as tensors of this process (a tensor, or a list), copied before this returns.
        Raises HandoffError for a layout it refuses or a handle that does not open."""
        handle, structure, tensors = read_layout(layout, like)
        if handle != self._handle:
            self.close()
            self._size = self._import.open(handle)
            self._handle = handle
        ends = [offset + dtype.itemsize * _numel(shape) for dtype, shape, offset in tensors]
        if any(end > self._size for end in ends):
            raise HandoffError(f"a tensor ends at byte {max(ends)} of a {self._size}-byte buffer")
        copies = [torch.empty(shape, dtype=dtype, device=like[0].device) for dtype, shape, _ in tensors]
        self._import.read(copies, [offset for _, _, offset in tensors])
        return copies[0] if structure == "tensor" else copies

    def close(self) -> None:
        if self._handle:
            self._handle = b""
            self._import.close()


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
