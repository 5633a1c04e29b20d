"""The file format in which workers hand outputs and buffers to the parent (kbench.tensor_files).

A solution worker writes these files, so every test of a forged file is a cheat the reader must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kbench import tensor_files
from kbench.compare import UnreadableOutput, load_outputs
from kbench.tensor_files import MAGIC, UnreadableTensors, decode, encode


def file_bytes(record: dict) -> bytearray:
    return bytearray(b"".join(bytes(piece) for piece in encode(record)))


def forged(header: dict, data: bytes = b"") -> bytearray:
    text = json.dumps(header).encode()
    start = len(MAGIC) + 8 + len(text)
    return bytearray(MAGIC + len(text).to_bytes(8, "little") + text + bytes(-start % 64) + data)


@pytest.mark.parametrize("dtype", list(tensor_files.DTYPES.values()), ids=str)
def test_every_dtype_comes_back_with_its_values_and_shape(dtype: torch.dtype):
    values = (torch.randn(6, 5, dtype=torch.float64) * 50).to(dtype)
    tensors = [values, values.t(), values[0, 0], values[:0]]  # non-contiguous, 0-d and empty too
    record = decode(file_bytes({"structure": "sequence", "tensors": tensors}))
    assert record["structure"] == "sequence"
    for sent, got in zip(tensors, record["tensors"], strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape and torch.equal(got, sent)


def test_named_tensors_and_fields_come_back_and_tensors_share_the_bytes_read():
    state = {"running_mean": torch.arange(4.0), "num_batches_tracked": torch.tensor(7)}
    content = file_bytes(state)
    record = decode(content)
    assert set(record) == set(state) and all(torch.equal(record[k], v) for k, v in state.items())
    content[-1] ^= 0xFF  # the last byte belongs to the last tensor: no copy was made of it
    assert not torch.equal(decode(content)["num_batches_tracked"], state["num_batches_tracked"])
    assert decode(file_bytes({"structure": "tuple", "not_tensor": "Lazy", "tensors": []})) == {
        "structure": "tuple",
        "not_tensor": "Lazy",
        "tensors": [],
    }


def test_a_bool_byte_other_than_0_or_1_is_read_as_a_proper_bool():
    content = file_bytes({"tensors": [torch.tensor([True, False])]})
    content[-2] = 7  # the first element
    (flags,) = decode(content)["tensors"]
    assert flags.tolist() == [True, False] and flags.view(torch.uint8).tolist() == [1, 0]


def entry(**changes: object) -> dict:
    return {"key": "tensors", "index": 0, "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8, **changes}


@pytest.mark.parametrize(
    "content",
    [
        bytearray(b"PK\x03\x04 a torch.save archive"),
        bytearray(MAGIC + (10**9).to_bytes(8, "little") + b"{}"),  # a header longer than the file
        bytearray(MAGIC + (2).to_bytes(8, "little") + b"{["),  # not JSON
        forged({"fields": {}, "tensors": "many"}),
        forged({"fields": {}, "tensors": [entry(dtype="object")]}, bytes(8)),
        forged({"fields": {}, "tensors": [entry(dtype="float8_e4m3fn")]}, bytes(8)),
        forged({"fields": {}, "tensors": [entry(shape=[-2], nbytes=8)]}, bytes(8)),
        forged({"fields": {}, "tensors": [entry(shape=[True, 2])]}, bytes(8)),
        forged({"fields": {}, "tensors": [entry(shape=[3])]}, bytes(12)),  # more elements than bytes
        forged({"fields": {}, "tensors": [entry(shape=[1000], nbytes=4000)]}, bytes(8)),  # past the file's end
        forged({"fields": {}, "tensors": [entry(offset=4)]}, bytes(12)),  # misaligned
        forged({"fields": {"tensors": []}, "tensors": [entry()]}, bytes(8)),  # a tensor under a field's key
        forged({"fields": {}, "tensors": [entry(index=1)]}, bytes(8)),  # list entries out of order
        forged({"fields": {}, "tensors": [entry(index=None), entry(index=None, offset=64)]}, bytes(72)),
    ],
    ids=[
        "not-this-format",
        "header-past-the-end",
        "header-not-json",
        "tensors-not-a-list",
        "object-dtype",
        "unlisted-dtype",
        "negative-size",
        "bool-size",
        "too-few-bytes",
        "past-the-end",
        "misaligned",
        "key-of-a-field",
        "out-of-order",
        "two-under-one-key",
    ],
)
def test_a_forged_file_is_refused(content: bytearray):
    with pytest.raises(UnreadableTensors):
        decode(content)


def test_an_output_record_must_hold_tensors_and_a_state_file_is_not_one(tmp_path: Path):
    path = tmp_path / "new_trial0.kbt"
    path.write_bytes(forged({"fields": {"structure": "tensor", "tensors": [1.0, 2.0]}, "tensors": []}))
    with pytest.raises(UnreadableOutput, match="not an output record"):
        load_outputs(path)
    path.write_bytes(file_bytes({"running_mean": torch.zeros(2)}))
    with pytest.raises(UnreadableOutput, match="not an output record"):
        load_outputs(path)
    path.write_bytes(file_bytes({"structure": "tensor", "tensors": [torch.ones(3)]}))
    assert torch.equal(load_outputs(path)["tensors"][0], torch.ones(3))


def test_a_file_read_from_disk_decodes_and_one_longer_or_shorter_than_announced_is_refused(tmp_path: Path):
    path = tmp_path / "new_timed3.kbt"
    record = {"structure": "tensor", "tensors": [torch.randn(1000, 33)]}
    path.write_bytes(file_bytes(record))
    size = path.stat().st_size
    content = tensor_files.read_bytes(path, size)
    assert torch.equal(decode(content)["tensors"][0], record["tensors"][0])
    with pytest.raises(UnreadableTensors, match="not 100 bytes long"):
        tensor_files.read_bytes(path, 100)  # a file grown past what the worker announced
    with pytest.raises(UnreadableTensors):
        tensor_files.read_bytes(path, size + 1)  # or cut short
    path.write_bytes(b"")
    with pytest.raises(UnreadableTensors, match="not a kbench tensor file"):
        decode(tensor_files.read_bytes(path))


def test_the_judge_reads_files_ahead_in_order_and_refuses_one_changed_after_it_was_announced(tmp_path: Path):
    from kbench.output_checks import READERS, TamperedOutput, load_all
    from kbench.spec import bytes_digest

    paths, announced = [], {}
    for index in range(READERS * 2 + 1):  # more files than readers: the order must survive the pool
        path = tmp_path / f"new_trial{index}.kbt"
        content = file_bytes({"structure": "tensor", "tensors": [torch.full((64,), float(index))]})
        path.write_bytes(content)
        paths.append(path)
        announced[path.name] = (bytes_digest(content), len(content))
    assert [int(r["tensors"][0][0]) for r in load_all(paths, announced)] == list(range(len(paths)))
    changed = paths[READERS + 1]
    changed.write_bytes(file_bytes({"structure": "tensor", "tensors": [torch.full((64,), -1.0)]}))  # same size
    with pytest.raises(TamperedOutput, match=changed.name):
        load_all(paths, announced)


def test_the_digest_a_worker_announces_is_the_one_the_parent_computes_from_the_file(tmp_path: Path, monkeypatch):
    import os

    from kbench import spec
    from kbench.channel import Channel

    monkeypatch.setattr(spec, "SEGMENT_BYTES", 1000)  # pieces then cross segments, and segments cross pieces
    read_end, write_end = os.pipe()
    channel = Channel(write_end)
    pieces = [b"x" * 17, memoryview(torch.arange(625, dtype=torch.int32).numpy()).cast("B"), b"", b"yz" * 600]
    path = tmp_path / "new_trial0.kbt"
    channel.write_announced(path, pieces)
    os.close(write_end)
    message = json.loads(os.read(read_end, 1 << 16))
    content = path.read_bytes()
    assert message == {"output": path.name, "digest": spec.bytes_digest(content), "size": len(content)}
    assert len(content) == 17 + 2500 + 1200
    changed = bytearray(content)
    changed[2600] ^= 1  # one byte in the third segment
    assert spec.bytes_digest(changed) != message["digest"]
