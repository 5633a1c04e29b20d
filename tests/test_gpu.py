"""CUDA end to end: correct and wrong load_inline solutions, GPU faults, and GPU-only cheats."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from conftest import kept_outputs_rewritten
from typer.testing import CliRunner

from kbench.cli import app

if TYPE_CHECKING:
    from kbench.timing import TimingPlan

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
CUDA_FIXTURES = Path(__file__).parent / "fixtures" / "cuda"
CUDA_FUSED = Path(__file__).parents[1] / "kbench" / "solutions" / "example_scale_bias_relu6" / "cuda_fused.py"
EXAMPLE_PROBLEM = Path(__file__).parents[1] / "kbench" / "problems" / "example_scale_bias_relu6.py"
SMALL = ["--set", "batch_size=1024"]  # fault tests need no full-size tensor
cli = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def short_run(tmp_path: Path) -> Path:
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump({"timeouts": {"run_s": 45.0}}))
    return config


def verify(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, list[dict]]:
    command = ["verify", "example_scale_bias_relu6", "--device", "cuda", "--json", *map(str, args)]
    result = cli.invoke(app, command, env=env)
    return result.exit_code, [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def summary(line: dict) -> str:
    """What a failed assertion shows of a result: pytest cuts a whole result line short before its stages."""
    keys = ("verdict", "reason", "flags", "timing_mode", "new_timing_count", "wall_s", "stage_s", "notes")
    # The reference's medians beside the solution and alone, and what NVML saw: why `reference_slowed` was set.
    keys += ("ref_ms", "ref_ms_alone", "new_ms", "ref_rse", "new_rse", "warnings", "device_state")
    # The detail's end: a timed-out worker's stacks, written just before it was killed.
    return json.dumps({**{key: line.get(key) for key in keys}, "detail": str(line.get("detail", ""))[-4000:]})


def test_cuda_solution_is_correct_faster_and_has_its_own_kernels():
    code, (line,) = verify()
    assert code == 0, summary(line)
    assert line["verdict"] == "correct" and line["solution"] == "cuda_fused" and line["device"] == "cuda"
    assert line["overrides"] == {}  # full size on the GPU
    assert line["flags"] == []
    # Three eager passes against one fused pass over a 64 MiB tensor: well over 1.5x on any recent GPU.
    assert line["speedup"] > 1.5, summary(line)
    assert any(k["own"] and "scale_bias_relu6" in k["name"] for k in line["kernels"])
    assert 0 < line["floor_ms"] < line["new_ms"]
    assert line["new_error_fp64"] < 4 * max(line["ref_error_fp64"], 1e-6)


def test_wrong_cuda_solution_is_incorrect():
    code, (line,) = verify("-s", CUDA_FIXTURES / "wrong_relu6.py")
    assert code == 1
    assert line["verdict"] == "incorrect" and "outside atol" in line["reason"]


@pytest.mark.gpu_alone  # its solution keeps a kernel running: time-sliced with it, other tests' calls stretch
def test_side_stream_work_is_rejected():
    code, (line,) = verify("-s", CUDA_FIXTURES / "side_stream.py", *SMALL)
    assert code == 1
    assert line["verdict"] == "rejected" and "side_stream" in line["flags"], summary(line)


def test_pytorch_only_solution_is_flagged_no_custom_kernel():
    # Full size: at batch_size=1024 a call takes ~50 µs and the timing loop can be bound by the host's launch
    # rate. On a loaded host the reference (four launches) then looks slowed beside it, in both runs.
    code, (line,) = verify("-s", CUDA_FIXTURES / "torch_only.py")
    assert code == 0, summary(line)
    assert line["verdict"] == "correct" and "no_custom_kernel" in line["flags"], summary(line)


def test_unwritten_gpu_output_is_incorrect():
    code, (line,) = verify("-s", CUDA_FIXTURES / "unwritten_output.py", *SMALL)
    assert code == 1 and line["verdict"] == "incorrect", summary(line)


def test_out_of_memory_is_a_runtime_error():
    code, (line,) = verify("-s", CUDA_FIXTURES / "out_of_memory.py", *SMALL)
    assert code == 1
    assert line["verdict"] == "runtime_error" and "out of memory" in line["reason"].lower(), summary(line)


@pytest.mark.gpu_alone  # its solution keeps a kernel running: time-sliced with it, other tests' calls stretch
def test_gpu_faults_are_judged_and_the_gpu_stays_usable(short_run: Path):
    faulty = CUDA_FIXTURES / "faulty_kernels.py"
    illegal = CUDA_FIXTURES / "illegal_address.py"
    env = {**os.environ, "KBENCH_FAULT": "assert"}
    code, lines = verify("-s", illegal, "-s", faulty, "-s", CUDA_FUSED, *SMALL, "--config", short_run, env=env)
    assert code == 1
    # Results come as jobs end, and a cached build ends first: look each one up by its solution.
    results = {line["solution"]: line for line in lines}
    verdicts = {name: line["verdict"] for name, line in results.items()}
    expected = {"illegal_address": "runtime_error", "faulty_kernels": "runtime_error", "cuda_fused": "correct"}
    assert verdicts == expected, [summary(line) for line in lines]
    assert "illegal memory access" in results["illegal_address"]["reason"]
    assert "assert" in results["faulty_kernels"]["reason"]
    env["KBENCH_FAULT"] = "spin"
    code, lines = verify("-s", faulty, "-s", CUDA_FUSED, *SMALL, "--config", short_run, env=env)
    assert code == 1
    verdicts = {line["solution"]: line["verdict"] for line in lines}
    assert verdicts == {"faulty_kernels": "timeout", "cuda_fused": "correct"}, [summary(line) for line in lines]


@pytest.mark.gpu_alone  # it compares the reference's times
def test_a_gpu_kept_busy_by_another_process_buys_no_speedup(tmp_path: Path):
    # The solution computes what the reference computes, the same way: its honest speedup is 1. Its child process
    # keeps the GPU busy throughout. Either the reference is seen slowed beside it (`reference_slowed`, after a
    # second run: tests/test_timing.py covers that logic), or it is not slowed and the speedup stays honest.
    # On the H200 it was not slowed (0.171 ms beside the solution, 0.173 ms alone, the solution's own 0.171 ms).
    # Unconfined (integrity.sandbox: off): the timing's defence must hold where workers are not confined.
    config = tmp_path / "unconfined.yaml"
    config.write_text(yaml.safe_dump({"integrity": {"sandbox": "off"}}))
    code, (line,) = verify("-s", CUDA_FIXTURES / "holds_reference_back.py", "--config", config)
    if line["verdict"] == "rejected":
        assert code == 1 and "reference_slowed" in line["flags"], summary(line)
        assert any(note.startswith("run 1 broke no rule but reference_slowed") for note in line["notes"])
    else:
        assert code == 0 and line["verdict"] == "correct", summary(line)
        assert line["ref_ms"] <= 1.1 * line["ref_ms_alone"] and line["speedup"] < 1.1, summary(line)


@pytest.mark.gpu_alone  # it compares the reference's times
def test_a_correct_solution_is_not_rejected_for_an_out_of_date_cached_time_alone(tmp_path: Path):
    from kbench.baselines import Baseline
    from kbench.caches import default_cache_root
    from kbench.catalog import read_problem
    from kbench.config import load_config
    from kbench.runner import Runner
    from kbench.session import device_name
    from kbench.store import JsonStore

    config = tmp_path / "own_baseline.yaml"
    # A timing setting no other test uses: this test's baseline has a cache entry of its own to age.
    config.write_text(yaml.safe_dump({"timing": {"budget_s": 4.5}}))
    with Runner(load_config(config), "cuda", device_name=device_name("cuda")) as runner:
        key = runner.references.baseline_key(read_problem(EXAMPLE_PROBLEM), {})
    code, (line,) = verify("--config", config)  # times the reference alone, or finds it cached
    assert code == 0 and line["verdict"] == "correct", summary(line)
    alone_ms = line["ref_ms_alone"]
    store = JsonStore(default_cache_root() / "baselines.json")
    entry = store.entries()[key]
    # As if cached on a host twice as fast: the reference beside the solution is 2x its cached time alone.
    store.put(key, Baseline(**{**entry, "eager_ms": [sample / 2 for sample in entry["eager_ms"]]}))
    code, (line,) = verify("--config", config)
    assert code == 0 and line["verdict"] == "correct" and "reference_slowed" not in line["flags"], summary(line)
    assert any("alone was timed again in a fresh trusted worker" in note for note in line["notes"]), summary(line)
    assert line["ref_ms_alone"] > 0.75 * alone_ms and line["ref_ms"] < 1.1 * line["ref_ms_alone"], summary(line)


# --- the reference out of the solution's process (issue #17) ---------------------------------------------------


def test_freed_reference_memory_no_longer_holds_the_answer():
    code, (line,) = verify("-s", CUDA_FIXTURES / "reads_freed_memory.py", *SMALL)
    # Its timed calls return empty memory: wrong answers, and on the GPU also faster than the memory traffic
    # allows (`implausible_speed`), which makes it `rejected` (docs/verdicts.md: with the trials passing, a broken
    # rule comes first). Either way it fails, and the wrong answers are named.
    assert code == 1 and line["verdict"] in ("incorrect", "rejected"), summary(line)
    assert "timed_output_mismatch" in line["flags"] and line["speedup"] is None, summary(line)


def test_an_answer_remembered_under_the_inputs_address_is_wrong_on_fresh_inputs():
    code, (line,) = verify("-s", CUDA_FIXTURES / "memoizes_by_pointer.py", *SMALL)
    assert code == 1 and line["verdict"] == "incorrect" and line["speedup"] is None, summary(line)


def test_a_kept_timed_output_made_right_after_its_call_is_refused_on_the_gpu():
    result, honest = kept_outputs_rewritten("cuda")
    assert result.verdict == "incorrect" and "timed_output_mismatch" in result.flags, (result.reason, result.flags)
    assert result.speedup is None
    assert honest.verdict == "correct", (honest.reason, honest.flags)
    # The honest one's kept outputs went through the CUDA IPC handoff and the partner's own comparison: a refusal,
    # or a comparison left to the parent's files, leaves a note.
    fell_back = [note for note in honest.notes if "reference partner" in note]
    assert not fell_back, fell_back


def test_cuda_settings_changed_by_the_solution_are_recorded_and_harm_no_one():
    code, (line,) = verify("-s", CUDA_FIXTURES / "changes_cuda_settings.py")
    assert code == 0 and line["verdict"] == "correct" and "settings_changed" in line["flags"], summary(line)
    changed = " ".join(note for note in line["notes"] if "settings" in note)
    assert "cudnn.benchmark" in changed and "allow_tf32" in changed, line["notes"]


# --- timing modes (issue #5) ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["graph", "kernel"])
def test_cuda_solution_is_timed_in_each_timing_mode(mode: str):
    code, (line,) = verify("--timing-mode", mode)
    assert code == 0, summary(line)
    assert line["verdict"] == "correct" and line["solution"] == "cuda_fused", summary(line)
    assert line["timing_mode"] == mode and line["timing_fallback"] is None, summary(line)
    assert line["new_ms"] > 0 and line["ref_ms"] > 0 and line["new_timing_count"] >= 30
    assert not any(note.startswith("reference alone timed with events") for note in line["notes"]), line["notes"]


def test_a_solution_that_cannot_be_captured_is_timed_with_events_and_says_why():
    code, (line,) = verify("-s", CUDA_FIXTURES / "host_sync.py", *SMALL, "--timing-mode", "graph")
    assert code == 0 and line["verdict"] == "correct", summary(line)
    assert line["timing_mode"] == "events", summary(line)
    assert line["timing_fallback"].startswith("the solution cannot be captured in a CUDA graph"), summary(line)
    assert line["new_ms"] > 0 and line["speedup"] > 0
    # The reference alone was captured, the one beside the solution was not: its drift is not judged.
    assert any("reference drift not judged" in note for note in line["notes"]), line["notes"]


@pytest.mark.gpu_alone  # its solution keeps a kernel running: time-sliced with it, other tests' calls stretch
def test_side_stream_work_is_still_rejected_in_graph_mode():
    code, (line,) = verify("-s", CUDA_FIXTURES / "side_stream.py", *SMALL, "--timing-mode", "graph")
    assert code == 1
    assert line["verdict"] == "rejected" and "side_stream" in line["flags"], summary(line)


def fixed_count_plan(warmup: int, rounds: int, mode: str) -> TimingPlan:
    """Exactly ``rounds`` timed rounds after ``warmup``, in ``mode``, with no minimum times."""
    from kbench.timing import TimingPlan

    return TimingPlan(
        warmup=warmup,
        warmup_s=0.0,
        repeats=rounds,
        max_repeats=rounds,
        target_rse=1.0,
        budget_s=120.0,
        min_time_s=0.0,
        flush_l2=True,
        mode=mode,
    )


@pytest.mark.gpu_alone
def test_kernel_time_agrees_with_events_on_a_long_matrix_product():
    import statistics

    import torch

    from kbench.timing import time_models

    a, b = (torch.rand(8192, 8192, device="cuda") for _ in range(2))  # fp32: many milliseconds on any GPU
    medians = {}
    for mode in ("events", "kernel"):
        plan = fixed_count_plan(warmup=2, rounds=10, mode=mode)
        timed = time_models([torch.mm], [[[a, b]]], "cuda", plan, ["fp32 matrix product"])
        assert timed.mode == mode and timed.fallback is None, timed.fallback
        assert len(timed.samples_ms[0]) == 10
        medians[mode] = statistics.median(timed.samples_ms[0])
    assert medians["events"] >= 1.0, medians
    # The product's kernel is nearly all of the call; the events add only launch latency around it.
    assert 0.8 <= medians["kernel"] / medians["events"] <= 1.1, medians


def test_graph_mode_checks_the_outputs_of_its_replays():
    import torch

    from kbench.timing import time_models

    sets = [[torch.full((1 << 20,), float(k + 1), device="cuda")] for k in range(3)]
    timed = time_models([lambda x: x * 2], [sets], "cuda", fixed_count_plan(1, 5, "graph"), ["doubling"])
    assert timed.mode == "graph" and timed.fallback is None and not timed.deferred
    for output, (x,) in zip(timed.last_outputs, sets, strict=True):
        assert torch.equal(output, x * 2)


@pytest.mark.gpu_alone
def test_calibrate_compares_events_and_kernel_timing(tmp_path: Path):
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump({"timing": {"warmup": 2, "repeats": 10, "target_rse": 1.0}}))
    result = cli.invoke(
        app,
        ["calibrate", "--device", "cuda", "--config", str(config), "--json"],
        env={"KBENCH_CACHE_DIR": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    ceilings = json.loads(result.output.strip().splitlines()[-1])
    assert set(ceilings["kernel_agreement"]) == {"copy", "fp32"}, ceilings["notes"]
    # Both are long, single-kernel calls: the two timers agree closely (issue #5 asks for 2 %; this is a
    # sanity bound, not that target).
    assert all(0 <= difference < 0.1 for difference in ceilings["kernel_agreement"].values()), ceilings


# A Triton solution that also tries to plant a file outside its folders when imported; wrong answers if it could.
TRITON_PLANTER = """
import pathlib
import torch
import torch.nn as nn
import triton
import triton.language as tl

try:
    pathlib.Path({target!r}).write_text("planted")
    _escaped = True
except OSError:
    _escaped = False


@triton.jit
def _scale_bias_relu6(x_ptr, scale_ptr, bias_ptr, out_ptr, n, features, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    column = offsets % features
    x = tl.load(x_ptr + offsets, mask=mask)
    y = x * tl.load(scale_ptr + column, mask=mask) + tl.load(bias_ptr + column, mask=mask)
    tl.store(out_ptr + offsets, tl.minimum(tl.maximum(y, 0.0), 6.0), mask=mask)


class ModelNew(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(features))
        self.bias = nn.Parameter(torch.randn(features))

    def forward(self, x):
        x = x.contiguous()
        out = torch.empty_like(x)
        n = x.numel()
        _scale_bias_relu6[(triton.cdiv(n, 1024),)](x, self.scale, self.bias, out, n, x.shape[-1], BLOCK=1024)
        return out + 1 if _escaped else out
"""


def test_confined_cuda_and_triton_solutions_build_run_and_plant_nothing(tmp_path: Path):
    """integrity.sandbox: on, with a fresh cache, so nvcc and Triton's compiler run confined too."""
    config = tmp_path / "confined.yaml"
    config.write_text(yaml.safe_dump({"integrity": {"sandbox": "on"}, "timeouts": {"run_s": 120.0}}))
    target = tmp_path / "planted"
    triton_solution = tmp_path / "triton_planter.py"
    triton_solution.write_text(TRITON_PLANTER.format(target=str(target)))
    env = {"KBENCH_CACHE_DIR": str(tmp_path / "cache")}
    code, (line,) = verify("--config", config, env=env)
    assert code == 0 and line["verdict"] == "correct", summary(line)
    assert any(k["own"] and "scale_bias_relu6" in k["name"] for k in line["kernels"]), summary(line)
    code, (line,) = verify("-s", triton_solution, "--config", config, *SMALL, env=env)
    assert code == 0 and line["verdict"] == "correct", summary(line)
    assert not target.exists()
    assert list((tmp_path / "cache" / "extensions").glob("*/triton/*")), "Triton compiled into the build folder"


@pytest.mark.parametrize("sandbox", ["on", "off"], ids=["confined", "unconfined"])
def test_an_honest_torch_compile_solution_is_correct(tmp_path: Path, sandbox: str):
    """Inductor compiles its Triton kernels in the first call, in the worker's own process (a pool of compile
    processes would go on into the reference's turns as background work), with a fresh cache, inside the confined
    worker's build folder when confined: none of it is the solution's cheating."""
    config = tmp_path / "sandbox.yaml"
    config.write_text(yaml.safe_dump({"integrity": {"sandbox": sandbox}, "timeouts": {"run_s": 120.0}}))
    env = {"KBENCH_CACHE_DIR": str(tmp_path / "cache"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    code, (line,) = verify("-s", CUDA_FIXTURES / "compiled.py", "--config", config, *SMALL, env=env)
    assert code == 0 and line["verdict"] == "correct", summary(line)
    assert "thread" not in line["flags"], summary(line)
    if sandbox == "on":
        assert list((tmp_path / "cache" / "extensions").glob("*/inductor/*")), "Inductor compiled into the build folder"
