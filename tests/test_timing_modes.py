"""Timing modes on the CPU: the configuration, the refusal of CUDA-only modes, what results record, the cache
key, and the graph and kernel logic with stand-ins for CUDA graphs and for the profiler's CUDA activity."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROBLEMS, SOLUTIONS, fast_config
from typer.testing import CliRunner

from kbench import timing, timing_modes
from kbench.catalog import read_problem
from kbench.cli import app
from kbench.config import (
    TIMING_MODES,
    ConfigError,
    KbenchConfig,
    check_timing_mode,
    load_config,
    with_timing_mode,
)
from kbench.report import COLUMNS, MARKDOWN_COLUMNS
from kbench.runner import Runner
from kbench.timing import TimingPlan, time_models
from kbench.timing_modes import Activity, ModeUnavailable, kernel_totals_ms
from kbench.timing_verdict import judge_timing
from kbench.untrusted.guards import Guards, _resolve

cli = CliRunner(env={"COLUMNS": "200"})
AFFINE = PROBLEMS / "affine_relu.py"


def plan(mode: str, **changes: float) -> TimingPlan:
    base = {
        "warmup": 1,
        "warmup_s": 0.0,
        "repeats": 4,
        "max_repeats": 4,
        "target_rse": 10.0,
        "budget_s": 5.0,
        "min_time_s": 0.0,
        "flush_l2": False,
    }
    return TimingPlan.from_dict({**base, **changes, "mode": mode})


def with_mode(mode: str) -> KbenchConfig:
    config = fast_config()
    return config.model_copy(update={"timing": config.timing.model_copy(update={"mode": mode})})


# --- configuration ----------------------------------------------------------------------------------------


def test_config_accepts_the_three_modes_and_names_the_key_for_any_other(tmp_path: Path):
    assert KbenchConfig().timing.mode == "events"
    assert set(TIMING_MODES) == {"events", *timing._SETUP}  # the config offers what the timer can do
    for mode in ("events", "graph", "kernel"):
        path = tmp_path / f"{mode}.yaml"
        path.write_text(f"timing: {{mode: {mode}}}\n")
        assert load_config(path).timing.mode == mode
        assert load_config(None, mode).timing.mode == mode  # --timing-mode
    path = tmp_path / "bad.yaml"
    path.write_text("timing: {mode: fastest}\n")
    with pytest.raises(ConfigError, match=r"key 'timing.mode': Input should be 'events', 'graph' or 'kernel'"):
        load_config(path)
    with pytest.raises(ConfigError, match="--timing-mode must be events, graph or kernel, not 'fastest'"):
        with_timing_mode(KbenchConfig(), "fastest")
    assert load_config(path.with_name("events.yaml"), "kernel").timing.mode == "kernel"  # the option wins


@pytest.mark.parametrize("mode", ["graph", "kernel"])
def test_cuda_only_modes_are_refused_on_the_cpu_before_any_job_runs(tmp_path: Path, mode: str):
    check_timing_mode(with_mode(mode), "cuda")  # fine where CUDA is
    with pytest.raises(ConfigError, match=f"timing mode '{mode}' needs CUDA"):
        check_timing_mode(with_mode(mode), "cpu")
    with pytest.raises(ConfigError, match="needs CUDA"):
        Runner(with_mode(mode), "cpu")
    with pytest.raises(ValueError, match="needs CUDA"):
        time_models([lambda x: x], [[[torch.ones(2)]]], "cpu", plan(mode))
    results = tmp_path / "results"
    for command in ("verify", "bench"):
        args = [command, str(AFFINE), "--device", "cpu", "--timing-mode", mode, "--results-dir", str(results)]
        outcome = cli.invoke(app, args[:-2] if command == "verify" else args)
        assert outcome.exit_code == 2 and "needs CUDA" in " ".join(outcome.output.split()), outcome.output
    assert not results.exists()  # refused before a run directory was made
    config = tmp_path / "mode.yaml"
    config.write_text(f"timing: {{mode: {mode}}}\n")
    outcome = cli.invoke(app, ["calibrate", "--device", "cpu", "--config", str(config)])
    assert outcome.exit_code == 2 and "needs CUDA" in " ".join(outcome.output.split())


@pytest.mark.slow
def test_resume_keeps_the_runs_own_timing_mode():
    outcome = cli.invoke(app, ["bench", "--resume", "any", "--timing-mode", "graph"])
    assert outcome.exit_code == 2 and "--resume takes no --timing-mode" in " ".join(outcome.output.split())


# --- what results record ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_mode_used_is_recorded_in_results_and_reports(tmp_path: Path):
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump(fast_config().model_dump()))
    solution = SOLUTIONS / "affine_relu" / "correct_torch.py"
    args = ["verify", str(AFFINE), "-s", str(solution), "--device", "cpu", "--config", str(config), "--json"]
    outcome = cli.invoke(app, [*args, "--timing-mode", "events"])
    line = json.loads(outcome.output.strip().splitlines()[-1])
    assert outcome.exit_code == 0 and line["verdict"] == "correct", outcome.output
    assert line["timing_mode"] == "events" and line["timing_fallback"] is None
    assert {"timing_mode", "timing_fallback"} <= set(COLUMNS) and "timing_mode" in MARKDOWN_COLUMNS


def test_the_parent_accepts_the_requested_mode_or_a_fallback_to_events_with_a_reason():
    samples = {"timing_ms": [1.0] * 30, "ref_timing_ms": [2.0] * 30}
    config = with_mode("graph")

    def judged(**reported: object) -> tuple[str | None, str | None, set[str]]:
        facts = judge_timing({**samples, **reported}, 2.0, config, on_cuda=True)
        return facts.mode, facts.fallback, facts.flags

    assert judged(timing_mode="graph", timing_fallback=None) == ("graph", None, set())
    reason = "the solution cannot be captured in a CUDA graph: RuntimeError: operation not permitted"
    assert judged(timing_mode="events", timing_fallback=reason) == ("events", reason, set())
    # A mode that was not asked for, or a fallback without a reason, is not believed.
    assert judged(timing_mode="kernel", timing_fallback=None)[2] == {"bad_timing"}
    assert judged(timing_mode="events", timing_fallback=None)[2] == {"bad_timing"}
    assert judged(timing_mode="graph", timing_fallback="but also events")[2] == {"bad_timing"}


@pytest.mark.slow
def test_the_baseline_cache_key_differs_by_timing_mode():
    problem = read_problem(AFFINE)
    keys = {}
    for mode in ("events", "graph", "kernel"):
        with Runner(with_mode(mode), "cuda", device_name="some-gpu") as runner:  # builds keys; runs nothing
            keys[mode] = runner.references.baseline_key(problem, {})
    assert len(set(keys.values())) == 3
    with Runner(with_mode("events"), "cuda", device_name="some-gpu") as runner:
        assert runner.references.baseline_key(problem, {}) == keys["events"]


@pytest.mark.parametrize("path", ["torch.cuda.CUDAGraph.replay", "torch.cuda.graph", "torch.profiler.record_function"])
def test_replacing_a_graph_or_profiler_function_is_timer_tampering(monkeypatch, path: str):
    guards = Guards()
    owner, name = path.rsplit(".", 1)
    original = _resolve(path)
    monkeypatch.setattr(_resolve(owner), name, lambda *args, **kwargs: None)
    assert guards.check() == (["timer_tampering"], [path])
    bound = {"torch.cuda.CUDAGraph.replay": "_replay", "torch.cuda.graph": "_graph"}
    if path in bound:  # kbench's own copy, bound at import, is untouched
        assert getattr(timing_modes, bound[path]) is original


@pytest.mark.slow
def test_calibrate_says_events_and_kernel_are_not_compared_on_the_cpu(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump(fast_config().model_dump()))
    outcome = cli.invoke(app, ["calibrate", "--device", "cpu", "--config", str(config)])
    assert outcome.exit_code == 0, outcome.output
    assert "events vs kernel timing: not available on the CPU" in " ".join(outcome.output.split())


# --- graph mode, with a stand-in for CUDA graphs ----------------------------------------------------------


class FakeGraph:
    """Records the work a cooperating forward registers while 'capturing'; a replay runs exactly that."""

    capturing: FakeGraph | None = None

    def __init__(self) -> None:
        self.work: list = []


@contextlib.contextmanager
def fake_capture(graph: FakeGraph, stream: object = None):
    FakeGraph.capturing = graph
    try:
        yield
    finally:
        FakeGraph.capturing = None


class FakeStream:
    def wait_stream(self, other: object) -> None:
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA's graph, stream and sync functions replaced by stand-ins; events timed as on the CPU."""
    replays: list[FakeGraph] = []
    monkeypatch.setattr(timing_modes, "_Stream", FakeStream)
    monkeypatch.setattr(timing_modes, "_current_stream", FakeStream)
    monkeypatch.setattr(timing_modes, "_stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(timing_modes, "_CUDAGraph", FakeGraph)
    monkeypatch.setattr(timing_modes, "_graph", fake_capture)
    monkeypatch.setattr(timing_modes, "_replay", lambda graph: replays.append(graph) or [w() for w in graph.work])
    monkeypatch.setattr(timing_modes, "_synchronize", lambda: None)
    monkeypatch.setattr(timing_modes, "_ACTIVITIES", [torch.profiler.ProfilerActivity.CPU])
    monkeypatch.setattr(timing, "_synchronize", lambda: None)
    monkeypatch.setattr(timing, "_time_batch", timing._time_batch_cpu)
    return replays


def doubling(x: torch.Tensor) -> torch.Tensor:
    """Honest under capture: the work is recorded into the graph, so every replay redoes it."""
    out = torch.empty_like(x)

    def work() -> None:
        out.copy_(x * 2)

    if FakeGraph.capturing is not None:
        FakeGraph.capturing.work.append(work)
    else:
        work()
    return out


def input_sets(count: int) -> list[list[torch.Tensor]]:
    return [[torch.full((4,), float(k + 1))] for k in range(count)]


def test_graph_mode_captures_each_model_and_input_set_and_times_their_replays(fake_cuda):
    sets = input_sets(2)
    timed = time_models([doubling, doubling], [input_sets(2), sets], "cuda", plan("graph"), ["reference", "solution"])
    assert timed.mode == "graph" and timed.fallback is None and not timed.deferred
    assert [len(s) for s in timed.samples_ms] == [4, 4]
    for output, (x,) in zip(timed.last_outputs, sets, strict=True):
        assert torch.equal(output, x * 2)  # the static outputs of the last replay on each set
    # 4 graphs (2 models x 2 sets), each replayed once untimed, then 4 rounds of one replay per model.
    assert len(set(map(id, fake_cuda))) == 4 and len(fake_cuda) == 4 + 4 * 2


def test_work_done_eagerly_at_capture_time_leaves_poisoned_outputs(fake_cuda):
    def eager_at_capture(x: torch.Tensor) -> torch.Tensor:  # computes while 'capturing', records nothing
        return x * 2

    timed = time_models([eager_at_capture], [input_sets(2)], "cuda", plan("graph"), ["solution"])
    assert timed.mode == "graph"
    assert all(torch.isnan(output).all() for output in timed.last_outputs)  # the parent sees a mismatch


def test_a_model_that_cannot_be_captured_is_timed_with_events_and_the_reason_kept(fake_cuda):
    def syncs(x: torch.Tensor) -> torch.Tensor:
        if FakeGraph.capturing is not None:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        return x * 2

    sets = input_sets(2)
    timed = time_models([doubling, syncs], [input_sets(2), sets], "cuda", plan("graph"), ["reference", "solution"])
    assert timed.mode == "events"
    assert timed.fallback == (
        "the solution cannot be captured in a CUDA graph: RuntimeError: CUDA error: operation not permitted when "
        "stream is capturing"
    )
    assert [len(s) for s in timed.samples_ms] == [4, 4]  # both models timed alike, with events
    assert all(torch.equal(output, x * 2) for output, (x,) in zip(timed.last_outputs, sets, strict=True))


# --- kernel mode ------------------------------------------------------------------------------------------


def host(name: str, start: int, end: int, correlation: int = 0) -> Activity:
    return Activity(name, False, correlation, start, end - start)


def device(name: str, correlation: int, duration: int) -> Activity:
    return Activity(name, True, correlation, 10_000, duration)


def test_kernel_time_counts_only_work_launched_inside_each_call():
    # As the profiler records them on an H100: an operator's kernel and an extension's kernel are each linked to
    # their cudaLaunchKernel by a correlation id, and only that API call's host time places them in a call.
    activities = [
        host("aten::zero_", 0, 5, correlation=900),  # the L2 flush, launched before the call
        host("cudaLaunchKernel", 1, 2, correlation=1),
        device("fill", 1, 100_000),
        host("call.0", 10, 20, correlation=901),
        host("aten::mm", 11, 15, correlation=902),
        host("cudaLaunchKernel", 12, 13, correlation=2),
        device("gemm", 2, 200_000),
        host("cudaLaunchKernel", 16, 17, correlation=3),  # the extension's own launch, under no operator
        device("own_kernel", 3, 30_000),
        device("call.0", 901, 400_000),  # the GPU-side span of the range is not work
        host("cudaLaunchKernel", 21, 22, correlation=4),  # the output fingerprint, after the call
        device("reduce", 4, 7_000),
        host("call.1", 30, 40, correlation=903),  # a call that launched nothing
        host("user_range", 31, 39, correlation=904),  # someone else's record_function range ...
        device("user_range", 904, 9_000),  # ... and its GPU-side span: not work either
    ]
    assert kernel_totals_ms(activities, "call.") == {"call.0": pytest.approx(0.23), "call.1": 0.0}


@pytest.mark.parametrize(
    ("launches", "found"),
    [([12, 30], "several API calls"), ([], "no API call")],
)
def test_kernel_time_refuses_device_work_it_cannot_place(launches: list[int], found: str):
    activities = [
        host("call.0", 10, 20),
        *[host("cudaLaunchKernel", t, t + 1, correlation=5) for t in launches],
        device("own_kernel", 5, 30_000),
    ]
    with pytest.raises(ModeUnavailable, match=f"'own_kernel' to {found}"):
        kernel_totals_ms(activities, "call.")


def test_kernel_mode_takes_one_sample_per_call_from_the_profiler(fake_cuda):
    timed = time_models([doubling, doubling], [input_sets(3), input_sets(3)], "cuda", plan("kernel"))
    assert timed.mode == "kernel" and timed.fallback is None
    # The CPU has no device kernels to count, but every call's range was found.
    assert timed.samples_ms == [[0.0] * 4, [0.0] * 4]


def test_kernel_mode_falls_back_to_events_when_the_profiler_fails(fake_cuda, monkeypatch):
    def broken(**kwargs: object) -> None:
        raise RuntimeError("CUPTI is not available")

    monkeypatch.setattr(timing_modes, "_profile", broken)
    timed = time_models([doubling], [input_sets(1)], "cuda", plan("kernel"))
    assert timed.mode == "events"
    assert timed.fallback == "torch.profiler cannot time device kernels here: RuntimeError: CUPTI is not available"
    assert len(timed.samples_ms[0]) == 4 and all(s > 0 for s in timed.samples_ms[0])
