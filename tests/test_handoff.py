"""Kept timed outputs handed from the solution's worker to the trusted partner (kbench.handoff): what the partner
refuses of a staged layout (on the CPU), which digests the parent reads the solution's timed outputs by, and, on a
GPU, a real handoff between two processes: the copy is the partner's own, and a layout pointing past the solution's
buffer is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from kbench.execution import pack_outputs
from kbench.fingerprints import fingerprint, plain_tensors
from kbench.handoff import Adopter, HandoffError, Staging, ipc_handle, read_layout
from kbench.isolation import WorkerRun
from kbench.partner import Partner
from kbench.turns import Interleaved

LIKE = [torch.zeros(4, 3), torch.zeros(2)]
GOOD = {
    "handle": "ab" * 64,
    "structure": "sequence",
    "tensors": [{"dtype": "float32", "shape": [4, 3], "offset": 0}, {"dtype": "float64", "shape": [2], "offset": 256}],
}


def _with(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def _tensor(index: int, **changes: Any) -> dict[str, Any]:
    tensors = [dict(item) for item in GOOD["tensors"]]
    tensors[index].update(changes)
    return _with(tensors=tensors)


def test_a_layout_of_the_references_shapes_is_read():
    handle, structure, tensors = read_layout(GOOD, LIKE)
    assert handle == bytes.fromhex("ab" * 64) and structure == "sequence"
    assert tensors == [(torch.float32, [4, 3], 0), (torch.float64, [2], 256)]


@pytest.mark.parametrize(
    ("layout", "why"),
    [
        ("not a layout", "not an object"),
        (_with(handle="ab" * 63), "64 bytes"),
        (_with(handle=7), "64 bytes"),
        (_with(structure="tensor"), "structure"),
        (_with(tensors=GOOD["tensors"][:1]), "where the reference returned 2"),
        (_tensor(0, shape=[4, 30]), "shape"),  # more than the reference: the partner would allocate it
        (_tensor(0, shape=[4, True]), "shape"),
        (_tensor(1, dtype="Tensor"), "not a torch dtype"),
        (_tensor(1, dtype="complex128"), "dtype"),  # 16 bytes an element: twice the reference's bound
        (_tensor(1, offset=-256), "offset"),
        (_tensor(1, offset="256"), "offset"),
        (_with(tensors=[GOOD["tensors"][0], "x"]), "described as str"),
    ],
)
def test_a_layout_the_partner_cannot_trust_is_refused(layout: Any, why: str):
    with pytest.raises(HandoffError, match=why):
        read_layout(layout, LIKE)


def test_a_handle_keeps_every_byte_zeros_included():
    raw = bytes([0, 7, 0, 0]) + bytes(range(60))
    assert bytes(ipc_handle(raw)) == raw


def test_the_solutions_timed_outputs_are_read_by_the_partners_digests_where_it_adopted_them():
    # The solution's worker announced a file for round 3, which the partner adopted: the worker's digest must not
    # count there, or it could save a file of its own under the partner's name and have it read.
    partner_run = WorkerRun(outputs={"new_timed3.kbt": ("partner", 8), "ref_timed3.kbt": ("ref", 8)})
    partner = Partner(partner_run, Interleaved(kept=[3, 5], adopted=[3]))
    solution = {"new_timed3.kbt": ("forged", 8), "new_timed5.kbt": ("solution", 8), "new_trial0.kbt": ("t", 8)}
    assert partner.timed_announced(solution) == {
        "new_timed3.kbt": ("partner", 8),
        "new_timed5.kbt": ("solution", 8),
        "new_trial0.kbt": ("t", 8),
    }
    # A round the partner adopted but did not announce is not read by the worker's digest either.
    assert "new_timed3.kbt" not in Partner(WorkerRun(), partner.turns).timed_announced(solution)


def test_on_the_cpu_a_staged_output_is_copied_out_of_the_workers_file_and_a_later_rewrite_does_not_reach_it(
    tmp_path: Path,
):
    output = torch.arange(12, dtype=torch.float32).reshape(4, 3) * 1.5
    staging, adopter = Staging("cpu", tmp_path), Adopter("cpu", tmp_path)
    layout = staging.stage(pack_outputs((output, output[:, 0] > 3), on_cpu=False))
    assert layout is not None and layout["structure"] == "sequence"
    like = [output, output[:, 0] > 3]
    whole, flags = adopter.adopt(layout, like)
    staging.stage(pack_outputs((output * 0, output[:, 0] > 99), on_cpu=False))  # as a later call could
    assert torch.equal(whole, output) and torch.equal(flags, output[:, 0] > 3)
    again = adopter.adopt(layout, like)  # the same buffer, now rewritten: the new copy shows it, the old does not
    assert torch.equal(again[0], output * 0) and torch.equal(whole, output)
    past = {**layout, "tensors": [layout["tensors"][0], {**layout["tensors"][1], "offset": 1 << 20}]}
    with pytest.raises(HandoffError, match="ends at byte"):
        adopter.adopt(past, like)
    adopter.close()


@pytest.mark.parametrize("name", [b"../spec.json", b"stage-1.buf", b"stage-7.buf", b"stage-8.buf"])
def test_on_the_cpu_a_handle_naming_anything_but_a_staging_file_is_refused(tmp_path: Path, name: bytes):
    (tmp_path / "spec.json").write_text("{}")
    (tmp_path / "stage-7.buf").symlink_to(tmp_path / "spec.json")  # a link: not followed
    os.mkfifo(tmp_path / "stage-8.buf")  # a FIFO: opening it must not wait for a writer
    layout = {**GOOD, "handle": name.ljust(64, b"\0").hex()}
    with pytest.raises(HandoffError):
        Adopter("cpu", tmp_path).adopt(layout, LIKE)


def test_a_staging_file_the_solution_made_first_makes_the_worker_save_files_instead(tmp_path: Path):
    (tmp_path / "stage-0.buf").write_bytes(b"x")
    with pytest.raises(HandoffError, match="no staging file"):
        Staging("cpu", tmp_path).stage(pack_outputs(torch.ones(3), on_cpu=False))


STAGER = """
import json, sys, torch
from pathlib import Path
from kbench.handoff import Staging
from kbench.execution import pack_outputs
staging = Staging("cuda", Path("."))
output = torch.arange(12, dtype=torch.float32, device="cuda").reshape(4, 3) * 1.5
print(json.dumps(staging.stage(pack_outputs((output, output[:, 0]), on_cpu=False))), flush=True)
sys.stdin.readline()  # the partner has copied: overwrite the staged output, as a later call could
staging.stage(pack_outputs((output * 0, output[:, 0] * 0), on_cpu=False))
print("rewritten", flush=True)
sys.stdin.readline()
"""


@pytest.mark.gpu
def test_a_staged_output_is_copied_by_the_partner_and_a_later_rewrite_does_not_reach_the_copy(tmp_path: Path):
    from kbench.handoff import Adopter

    script = tmp_path / "stager.py"
    script.write_text(STAGER)
    worker = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert worker.stdin is not None and worker.stdout is not None
    try:
        layout = json.loads(worker.stdout.readline())
        expected = torch.arange(12, dtype=torch.float32, device="cuda").reshape(4, 3) * 1.5
        like = [expected, expected[:, 0].contiguous()]
        adopter = Adopter("cuda", tmp_path)
        whole, column = adopter.adopt(layout, like)
        worker.stdin.write("\n")
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == "rewritten"
        assert torch.equal(whole, expected) and torch.equal(column, expected[:, 0])
        # Past the end of the solution's buffer, and a handle that opens nothing: refused, never read.
        past = {**layout, "tensors": [layout["tensors"][0], {**layout["tensors"][1], "offset": 1 << 40}]}
        with pytest.raises(HandoffError, match="ends at byte"):
            adopter.adopt(past, like)
        with pytest.raises(HandoffError, match="cuIpcOpenMemHandle"):
            Adopter("cuda", tmp_path).adopt({**layout, "handle": "00" * 64}, like)
        adopter.close()
        assert torch.equal(whole, expected)
    finally:
        worker.kill()
        worker.wait()


class _Pipe:
    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = []

    def reply(self, **message: Any) -> None:
        self.replies.append(message)


def test_kernel_timing_keeps_outputs_in_files_the_profiler_can_account_for(tmp_path: Path, monkeypatch):
    # The handoff's copies are CUDA driver calls, which the profiler links to no API call: a kernel-mode batch
    # that staged an output would be refused. Once kernel timing is set up, a kept output is saved instead.
    from kbench import turn_taker

    monkeypatch.setattr(turn_taker, "probe_kernels", lambda timed, index, flush: None)
    pipe, saved = _Pipe(), []
    spec = SimpleNamespace(device="cpu", timing={"checked_calls": 2})
    rounds = turn_taker._Rounds(
        forward=lambda x: x + 1,
        problem=SimpleNamespace(),
        spec=spec,  # type: ignore[arg-type]
        pipe=pipe,  # type: ignore[arg-type]
        keep=lambda index, output: saved.append(index),
        watched=True,
        handoff=Staging("cpu", tmp_path),
    )
    rounds.outputs, rounds.round = [torch.ones(3)], 0
    rounds._output_print = fingerprint(plain_tensors(rounds.outputs[0]))
    rounds.on_keep({"keep": 0, "slot": 0})
    assert "staged" in pipe.replies[-1] and saved == []  # events timing: staged for the partner
    turn_taker._setup(rounds, "kernel", 1, None)
    rounds.round = 1
    rounds.on_keep({"keep": 1, "slot": 1})
    assert pipe.replies[-1] == {"kept": 1} and saved == [1]
