"""The file format of the outputs and buffers that workers hand to the parent: a JSON header, then raw tensor bytes.

Why not ``torch.save``: a job's outputs are gigabytes (16-64M elements, 14 outputs a worker, float64 copies), and
``torch.save`` copies each tensor once more into its archive on writing, ``torch.load`` once more out of it on
reading. Here the writer writes the tensor's own memory and the reader takes tensors as views of the bytes it read
(and hashed) once. The reader trusts nothing in the file: a solution worker writes it. The header is bounded JSON,
dtypes come from a fixed list, every tensor's bytes must lie inside the file where the header says, and nothing is
ever executed or unpickled.

Layout: ``MAGIC``, the header's length (8 bytes, little-endian), the header, then each tensor's bytes at an offset
aligned to ``ALIGN`` (so that a view of any dtype is aligned). A record is a dict whose values are JSON values, a
tensor, or a list of tensors; the header keeps the JSON values and says where each tensor goes back.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

MAGIC = b"KBENCH-TENSORS-1\n"
ALIGN = 64
MAX_HEADER_BYTES = 16 << 20  # a header past this is not one kbench wrote
DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.complex128,
        torch.complex64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


# What a file is read into: writable, so that tensors can be views of it.
Content = bytearray | mmap.mmap


class UnreadableTensors(ValueError):
    """Bytes that are not a tensor record this module wrote."""


def _padding(offset: int) -> int:
    return -offset % ALIGN


def _flat(tensor: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The CPU tensor's values, contiguous, viewed as bytes; its dtype's name."""
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise TypeError(f"kbench does not hand over {tensor.dtype} tensors")
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8), name


def encode(record: Mapping[str, Any]) -> list[memoryview | bytes]:
    """The record's file as pieces to write one after another (the tensors' pieces are views of their memory)."""
    fields: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    data: list[torch.Tensor] = []
    for key, value in record.items():
        items = value if isinstance(value, list) and all(isinstance(v, torch.Tensor) for v in value) else None
        if isinstance(value, torch.Tensor) or (items is not None and items):
            for index, tensor in enumerate(items if items is not None else [value]):
                flat, dtype = _flat(tensor)
                entries.append(
                    {
                        "key": key,
                        "index": index if items is not None else None,
                        "dtype": dtype,
                        "shape": list(tensor.shape),
                        "nbytes": flat.numel(),
                    }
                )
                data.append(flat)
        else:
            fields[key] = value
    offset = 0
    for entry in entries:
        offset += _padding(offset)
        entry["offset"] = offset
        offset += entry["nbytes"]
    header = json.dumps({"fields": fields, "tensors": entries}).encode()
    start = len(MAGIC) + 8 + len(header)
    pieces: list[memoryview | bytes] = [MAGIC, len(header).to_bytes(8, "little"), header, bytes(_padding(start))]
    written = 0
    for entry, flat in zip(entries, data, strict=True):
        pieces.append(bytes(entry["offset"] - written))
        pieces.append(memoryview(flat.numpy()))
        written = entry["offset"] + entry["nbytes"]
    return [piece for piece in pieces if len(piece)]


def _header(content: Content) -> tuple[dict[str, Any], int]:
    if content[: len(MAGIC)] != MAGIC or len(content) < len(MAGIC) + 8:
        raise UnreadableTensors("not a kbench tensor file")
    length = int.from_bytes(content[len(MAGIC) : len(MAGIC) + 8], "little")
    begin = len(MAGIC) + 8
    if length > min(MAX_HEADER_BYTES, len(content) - begin):
        raise UnreadableTensors("its header is longer than the file allows")
    try:
        header = json.loads(bytes(content[begin : begin + length]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UnreadableTensors("its header is not JSON") from None
    if not (
        isinstance(header, dict) and isinstance(header.get("fields"), dict) and isinstance(header.get("tensors"), list)
    ):
        raise UnreadableTensors("its header is not a tensor record's")
    data_start = begin + length
    return header, data_start + _padding(data_start)


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UnreadableTensors(f"{value!r} is not a size")
    return value


def _tensor(content: Content, base: int, entry: Any) -> torch.Tensor:
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
        raise UnreadableTensors("a tensor of no known dtype")
    dtype = DTYPES[entry["dtype"]]
    if not isinstance(entry.get("shape"), list):
        raise UnreadableTensors("a tensor without a shape")
    shape = [_count(n) for n in entry["shape"]]
    offset, nbytes = _count(entry.get("offset")), _count(entry.get("nbytes"))
    numel = 1
    for n in shape:
        numel *= n
    if nbytes != numel * dtype.itemsize or offset % ALIGN or base + offset + nbytes > len(content):
        raise UnreadableTensors("a tensor's bytes do not lie where its header says")
    if not nbytes:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(content, dtype=torch.uint8, count=nbytes, offset=base + offset)
    if dtype == torch.bool:
        return (raw != 0).view(shape)  # a byte other than 0 or 1 is no bool torch can compare
    return raw.view(dtype).view(shape)


def decode(content: Content) -> dict[str, Any]:
    """The record written by ``encode``; its tensors are views of ``content``. Raises UnreadableTensors."""
    header, base = _header(content)
    record: dict[str, Any] = dict(header["fields"])
    for entry in header["tensors"]:
        tensor = _tensor(content, base, entry)
        key, index = entry.get("key"), entry.get("index")
        if not isinstance(key, str) or key in header["fields"]:
            raise UnreadableTensors("a tensor under no usable key")
        if index is None:
            if key in record:
                raise UnreadableTensors(f"two tensors under {key!r}")
            record[key] = tensor
            continue
        listed = record.setdefault(key, [])
        if not isinstance(listed, list) or index != len(listed):
            raise UnreadableTensors(f"tensors of {key!r} out of order")
        listed.append(tensor)
    return record


def read_bytes(path: Path, limit: int | None = None) -> Content:
    """The file's bytes, in a buffer that ``decode``'s tensors can share; more than ``limit`` bytes is an error."""
    with path.open("rb") as file:
        return read_from(file, limit if limit is not None else path.stat().st_size, path.name)


def read_from(file: BinaryIO, size: int, name: str) -> Content:
    """An open file's ``size`` bytes, and nothing after them. The buffer is an anonymous mapping, not a
    ``bytearray``: a bytearray is zeroed first, holding the GIL (a tenth of a second per 134 MB), while the
    mapping's pages are filled as the read, which lets go of it, reaches them."""
    content = mmap.mmap(-1, size) if size else bytearray()
    read = file.readinto(content)
    if read != size or file.read(1):
        raise UnreadableTensors(f"{name} is not {size} bytes long")
    return content
