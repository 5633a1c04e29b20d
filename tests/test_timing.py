"""Timing: medians and their error, adaptive stopping, interleaving, the speedup interval, reference drift."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
from conftest import PROBLEMS, as_if_timed_on_a_quiet_host, fast_config, run_fixture, trust_every_check

from kbench import runner as runner_module
from kbench.catalog import read_problem
from kbench.config import ConfigError, KbenchConfig, TimingConfig, load_config
from kbench.judge import Sighted
from kbench.results import JobResult, Verdict
from kbench.runner import Runner
from kbench.stats import median_rse, median_trend, speedup_interval
from kbench.timing import TimingPlan, time_models
from kbench.timing_verdict import judge_timing


def plan(**changes: float) -> TimingPlan:
    base = {
        "warmup": 1,
        "warmup_s": 0.0,
        "repeats": 5,
        "max_repeats": 50,
        "target_rse": 0.5,
        "budget_s": 5.0,
        "min_time_s": 0.0,
        "flush_l2": False,
    }
    return TimingPlan.from_dict({**base, **changes})


def test_median_rse_shrinks_with_more_samples_and_is_zero_without_spread():
    rng = random.Random(1)
    few = [1 + rng.gauss(0, 0.01) for _ in range(30)]
    many = [1 + rng.gauss(0, 0.01) for _ in range(3000)]
    assert median_rse([2.0] * 10) == 0.0
    assert 0.001 < median_rse(few) < 0.006  # ~1.25 * 1 % / sqrt(30) = 0.23 %
    assert median_rse(many) < median_rse(few) / 5
    assert median_rse([1.0, 2.0]) == float("inf")


def test_speedup_interval_covers_the_true_ratio_and_drift_cancels():
    rng = random.Random(2)
    drift = [1 + 0.3 * i / 200 for i in range(200)]  # both slow down together over the run
    ref = [3.0 * d * (1 + rng.gauss(0, 0.01)) for d in drift]
    new = [1.0 * d * (1 + rng.gauss(0, 0.01)) for d in drift]
    low, high = speedup_interval(ref, new)
    assert low < 3.0 < high and high - low < 0.1
    assert speedup_interval([1.0, 2.0], [1.0, 2.0]) is None


def test_median_trend_sees_a_device_that_slows_while_it_is_timed():
    rng = random.Random(3)
    steady = [2.0 * (1 + rng.gauss(0, 0.005)) for _ in range(100)]
    slowing = [2.0 * (1 + 0.03 * i / 100) * (1 + rng.gauss(0, 0.005)) for i in range(100)]  # 3 % over the run
    trend, error = median_trend(steady)
    assert abs(trend) < 2 * error < 0.01
    trend, error = median_trend(slowing)
    assert trend == pytest.approx(0.015, abs=0.004) and trend > 4 * error  # half a 3 % ramp between the halves
    assert median_trend(list(reversed(slowing)))[0] == pytest.approx(-trend)
    assert median_trend([1.0] * 5) is None


def test_a_median_that_moved_while_it_was_timed_is_warned_about_and_a_steady_one_is_not():
    config = KbenchConfig(timing=TimingConfig(repeats=30, target_rse=0.005))
    rng = random.Random(4)
    steady = [2.0 * (1 + rng.gauss(0, 0.005)) for _ in range(90)]
    heating = [8.6 * (1 + 0.02 * i / 90) * (1 + rng.gauss(0, 0.001)) for i in range(90)]
    quiet = judge_timing(
        {"timing_ms": steady, "ref_timing_ms": steady[::-1], "timing_mode": "events"}, 2.0, config, True
    )
    assert quiet.warnings == [] and abs(quiet.new_trend) < 0.005 and abs(quiet.ref_trend) < 0.005
    drifted = judge_timing({"timing_ms": steady, "ref_timing_ms": heating, "timing_mode": "events"}, 8.6, config, True)
    assert drifted.ref_trend == pytest.approx(0.01, abs=0.002) and abs(drifted.new_trend) < 0.005
    (warning,) = drifted.warnings
    assert warning.startswith(f"the reference's calls ran {drifted.ref_trend:.2%} slower in the second half")
    # Beyond its noise but within the precision asked for: not worth a warning.
    slight = [8.6 * (1 + 0.006 * i / 90) for i in range(90)]
    assert (
        judge_timing(
            {"timing_ms": steady, "ref_timing_ms": slight, "timing_mode": "events"}, 8.6, config, True
        ).warnings
        == []
    )


def test_timing_stops_at_the_target_the_budget_or_the_cap():
    import time

    # 2 ms calls: steady enough for the first batch to meet the target even on a loaded machine, where calls
    # that take a microsecond vary by more than their own length (CI once needed 15 rounds of them).
    steady = time_models([lambda x: time.sleep(0.002)], [[[0]]], "cpu", plan())
    assert len(steady.samples_ms[0]) == 5
    slow_to_settle = time_models([lambda x: None], [[[0]]], "cpu", plan(target_rse=1e-12, max_repeats=40))
    assert len(slow_to_settle.samples_ms[0]) == 40  # never settles that tightly: the cap stops it
    budget = time_models([lambda x: None], [[[0]]], "cpu", plan(target_rse=1e-12, max_repeats=10**6, budget_s=0.2))
    assert 5 <= len(budget.samples_ms[0]) < 10**6


@pytest.mark.slow
def test_warm_up_and_timing_last_their_minimum_times_even_when_the_counts_are_met():
    import time

    calls: list[int] = []

    def sleepy(x: int) -> None:  # 10 ms a call: settles at once (no spread), so only the clocks keep it going
        calls.append(x)
        time.sleep(0.01)

    quick = time_models([sleepy], [[[0]]], "cpu", plan(warmup=2, repeats=5, target_rse=1.0))
    assert len(calls) == 2 + 5 and len(quick.samples_ms[0]) == 5
    calls.clear()
    started = time.perf_counter()
    slow = time_models(
        [sleepy], [[[0]]], "cpu", plan(warmup=2, warmup_s=0.15, repeats=5, target_rse=1.0, min_time_s=0.3)
    )
    took = time.perf_counter() - started
    timed_rounds = len(slow.samples_ms[0])
    assert len(calls) - timed_rounds >= 12  # warm-up: 2 rounds asked for, but 0.15 s of 10 ms calls is 15
    assert timed_rounds >= 25 and timed_rounds % 5 == 0  # 0.3 s of 10 ms calls, in whole batches of 5
    assert took >= 0.45


def test_minimum_time_yields_to_the_budget_and_cannot_exceed_it_in_a_config(tmp_path: Path):
    capped = time_models([lambda x: None], [[[0]]], "cpu", plan(max_repeats=10, target_rse=1.0, min_time_s=30.0))
    assert len(capped.samples_ms[0]) == 10  # the count cap still ends it
    config = tmp_path / "k.yaml"
    config.write_text("timing:\n  budget_s: 1.0\n  min_time_s: 2.0\n")
    with pytest.raises(ConfigError, match=r"min_time_s \(2.0\) must not exceed budget_s \(1.0\)"):
        load_config(config)


def test_interleaved_rounds_alternate_and_keep_the_last_models_outputs():
    order = []
    timed = time_models(
        [lambda x: order.append("ref") or "r", lambda x: order.append("new") or f"new{x}"],
        [[[0], [1]], [[0], [1]]],
        "cpu",
        plan(warmup=0, repeats=4, max_repeats=4),
    )
    assert order == ["ref", "new"] * 4
    assert [len(s) for s in timed.samples_ms] == [4, 4]
    assert timed.last_outputs == ["new0", "new1"]


def test_each_model_times_on_its_own_inputs_and_late_writes_show():
    import threading
    import time

    import torch

    ref_input, new_input = torch.ones(4), torch.ones(4)

    def vandal(x):  # scribbles on its input and leaves a thread writing the output
        x.mul_(100)
        out = torch.zeros(4)
        threading.Thread(target=lambda: (time.sleep(0.01), out.fill_(7.0)), daemon=True).start()
        return out

    seen = []
    timed = time_models(
        [lambda x: seen.append(float(x.sum())), vandal],
        [[[ref_input]], [[new_input]]],
        "cpu",
        plan(warmup=0, repeats=3, max_repeats=3),
    )
    time.sleep(0.05)
    assert seen == [4.0, 4.0, 4.0]  # the reference's inputs are its own
    assert timed.deferred


def _payload(ref: float, new: float, n: int = 30) -> dict:
    return {"timing_ms": [new] * n, "ref_timing_ms": [ref] * n, "timing_mode": "events"}


def test_reference_held_back_beside_the_solution_is_flagged_on_cuda():
    config = KbenchConfig(timing=TimingConfig(repeats=30, reference_drift=0.1))
    assert "reference_slowed" in judge_timing(_payload(1.2, 0.5), 1.0, config, on_cuda=True).flags
    fair = judge_timing(_payload(1.05, 0.5), 1.0, config, on_cuda=True)
    assert fair.flags == set() and fair.speedup == pytest.approx(2.1)
    assert judge_timing(_payload(1.2, 0.5), 1.0, config, on_cuda=False).flags == set()  # CPU: too noisy
    assert judge_timing({"timing_ms": [1.0] * 3, "ref_timing_ms": [1.0] * 30}, 1.0, config, True).flags == {
        "bad_timing"
    }


def _reference_slowed_in_runs(runs: int, calls: list[object]):
    """The real first look at a job's workers, except that the first ``runs`` runs of a job also show the reference
    held back, as the CUDA drift check would (it is not judged on the CPU)."""
    real = runner_module.first_look

    def first_look(*args, **kwargs):
        seen = real(*args, **kwargs)
        calls.append(seen)
        if len(calls) <= runs and isinstance(seen, Sighted):
            seen.flags.add("reference_slowed")
            seen.timing = dataclasses.replace(seen.timing, ref_ms=9.0)
        return seen

    return first_look


@pytest.mark.slow
def test_a_job_rejected_only_for_reference_drift_runs_again_and_a_repeated_drift_stays_rejected(monkeypatch):
    problem = read_problem(PROBLEMS / "affine_relu.py")

    def judged(name: str, slowed_runs: int, retries: int = 1) -> tuple[JobResult, list[str]]:
        calls: list[object] = []
        monkeypatch.setattr(runner_module, "first_look", _reference_slowed_in_runs(slowed_runs, calls))
        config = fast_config()
        timing = config.timing.model_copy(update={"reference_drift_retries": retries})
        config = config.model_copy(update={"timing": timing})
        with Runner(config, "cpu") as runner:
            return run_fixture(runner, problem, name), calls

    passing, calls = judged("correct_torch", slowed_runs=1)  # a slowdown that passed: judged on the second run
    assert len(calls) == 2 and passing.verdict == Verdict.CORRECT and passing.flags == []
    assert any(note.startswith("run 1 broke no rule but reference_slowed") and "9 ms" in note for note in passing.notes)
    assert passing.speedup is not None and passing.stage_s["earlier_runs"] > 0
    held_back, calls = judged("correct_torch", slowed_runs=2)  # held back every time: rejected
    assert len(calls) == 2 and held_back.verdict == Verdict.REJECTED and held_back.flags == ["reference_slowed"]
    assert held_back.speedup is None and any(note.startswith("run 1 ") for note in held_back.notes)
    no_retry, calls = judged("correct_torch", slowed_runs=1, retries=0)
    assert len(calls) == 1 and no_retry.verdict == Verdict.REJECTED and "earlier_runs" not in no_retry.stage_s
    # Another broken rule beside the drift decides the verdict at once: no second run.
    cheat, calls = judged("mutates_input", slowed_runs=1)
    assert len(calls) == 1 and cheat.verdict == Verdict.REJECTED and "input_mutated" in cheat.flags
    assert not any(note.startswith("run 1 ") for note in cheat.notes)


@pytest.mark.slow
def test_a_rerun_is_held_against_the_reference_alone_timed_again_not_an_out_of_date_baseline(monkeypatch, tmp_path):
    from kbench.baselines import Baseline
    from kbench.reference import ReferenceRun
    from kbench.references import References
    from kbench.stats import median_ms
    from kbench.store import JsonStore

    problem = read_problem(PROBLEMS / "affine_relu.py")
    store = JsonStore(tmp_path / "baselines.json")
    with Runner(fast_config(), "cpu", baseline_cache=store) as cold:
        assert cold.references.get(problem, {}).error is None  # times the reference alone: fills the cache
    ((key, entry),) = store.entries().items()
    # An out-of-date baseline: the reference alone took 1 µs then (another host, a faster hour). A cached time
    # slower than now is refused by the cache's own check before any job (tests/test_baselines.py); a faster one
    # is left to the drift's second look.
    store.put(key, Baseline(**{**entry, "eager_ms": [0.001] * len(entry["eager_ms"])}))

    def judged_against() -> tuple[JobResult, list[float]]:
        yardsticks: list[float] = []
        slowed_once = _reference_slowed_in_runs(1, [])

        def first_look(*args, **kwargs):
            yardsticks.append(median_ms(args[1].timing_ms))  # first_look(worker, reference, ...)
            return slowed_once(*args, **kwargs)

        monkeypatch.setattr(runner_module, "first_look", first_look)
        with Runner(fast_config(), "cpu", baseline_cache=store) as runner:
            return run_fixture(runner, problem, "correct_torch"), yardsticks

    result, yardsticks = judged_against()
    assert yardsticks[0] == 0.001 < yardsticks[1], yardsticks
    assert result.verdict == Verdict.CORRECT and result.ref_ms_alone == yardsticks[1]
    assert any("alone was timed again in a fresh trusted worker" in note for note in result.notes), result.notes
    assert not any(note.startswith("reference timings (alone") for note in result.notes), result.notes
    assert store.entries()[key]["eager_ms"][0] == 0.001, "a time taken for one re-run is no baseline"

    # Where the reference cannot be timed again, the re-run is held against the yardstick it had.
    monkeypatch.setattr(References, "timed_again", lambda *_: ReferenceRun(error="No space left on device"))
    result, yardsticks = judged_against()
    assert yardsticks == [0.001, 0.001] and result.ref_ms_alone == 0.001
    assert any("again failed (No space left on device)" in note for note in result.notes), result.notes


def test_patching_a_function_the_reference_uses_is_rejected():
    with Runner(fast_config(), "cpu") as runner:
        result = run_fixture(runner, read_problem(PROBLEMS / "affine_relu.py"), "slows_reference")
        honest = run_fixture(runner, read_problem(PROBLEMS / "affine_relu.py"), "correct_torch")
    assert result.verdict == Verdict.REJECTED and "monkey_patch" in result.flags
    assert "torch.relu" in result.detail
    assert honest.speedup_low <= honest.speedup <= honest.speedup_high
    assert honest.ref_ms_alone is not None and honest.ref_rse is not None


@pytest.mark.slow
def test_compile_baseline_is_measured_once_then_taken_from_the_cache(tmp_path, monkeypatch):
    from kbench.config import BaselineConfig
    from kbench.store import JsonStore

    config = fast_config().model_copy(update={"baselines": BaselineConfig(compile="on")})
    cache = JsonStore(tmp_path / "baselines.json")
    problem = read_problem(PROBLEMS / "affine_relu.py")
    with Runner(config, "cpu", baseline_cache=cache, device_name="test-cpu") as first:
        measured = run_fixture(first, problem, "correct_torch")
    assert measured.compile_ms is not None and measured.compile_ms > 0, measured.notes
    assert measured.speedup_vs_compile == pytest.approx(measured.compile_ms / measured.new_ms)
    # Its compile phase, step by step: the first call (the compiling), then the timing.
    stages = measured.stage_s
    compiling, timing = stages["reference_step_compile_call"], stages["reference_step_compile_timing"]
    assert compiling > 0 and timing > 0 and compiling + timing <= stages["reference_compile"], stages
    as_if_timed_on_a_quiet_host(cache)
    trust_every_check(monkeypatch)
    with Runner(config, "cpu", baseline_cache=cache, device_name="test-cpu") as second:
        reused = run_fixture(second, problem, "correct_torch")
    assert reused.ref_ms_alone == measured.ref_ms_alone and reused.compile_ms == measured.compile_ms
    assert any("baseline cache" in note for note in reused.notes)
    # The cached entry keeps the modes its timings were taken in, so drift and speedup_vs_compile still apply.
    (entry,) = cache.entries().values()
    assert entry["timing_mode"] == entry["compile_timing_mode"] == reused.timing_mode == "events"
    assert reused.speedup_vs_compile is not None
    with Runner(config, "cpu", baseline_cache=cache, device_name="another-cpu") as elsewhere:
        fresh = run_fixture(elsewhere, problem, "correct_torch")
    assert not any("baseline cache" in note for note in fresh.notes)


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["exit", "hang"])
def test_a_torch_compile_that_hangs_or_crashes_costs_its_baseline_not_the_reference(failure, monkeypatch, tmp_path):
    from kbench.config import BaselineConfig
    from kbench.store import JsonStore

    monkeypatch.setenv("KBENCH_TEST_COMPILE", failure)
    config = fast_config(reference_s=15.0).model_copy(update={"baselines": BaselineConfig(compile="on")})
    with Runner(config, "cpu", baseline_cache=JsonStore(tmp_path / "baselines.json")) as runner:
        reference = runner.references.get(read_problem(PROBLEMS / "compile_breaks.py"), {})
    assert reference.error is None, reference.detail
    assert reference.timing_ms and reference.trials and not reference.compile_timing_ms
    expected = "torch.compile timed out after 15 s" if failure == "hang" else "exited with status 3"
    assert expected in (reference.compile_error or ""), reference.compile_error


def test_the_roofline_floor_is_the_larger_of_the_memory_and_compute_floors():
    from kbench.audit import compute_floor_ms, roofline_floor_ms
    from kbench.calibrate import Ceilings

    ceilings = Ceilings("gpu", copy_gbs=1000.0, gemm_tflops={"fp32": 50.0, "bf16": 500.0})
    # A GEMM: 0.1 ms of bytes, 2 ms of products at the fastest rate (bf16).
    assert compute_floor_ms(10**12, ceilings) == pytest.approx(2.0)
    assert roofline_floor_ms(10**8, 10**12, ceilings) == pytest.approx(2.0)
    # Elementwise (no products) or not counted: the bytes alone, 1 ms.
    assert compute_floor_ms(0, ceilings) is None
    assert roofline_floor_ms(10**9, 0, ceilings) == pytest.approx(1.0)
    assert roofline_floor_ms(10**9, None, ceilings) == pytest.approx(1.0)
    assert roofline_floor_ms(10**8, 10**12, None) is None  # no calibration: no floor, no fraction


@pytest.mark.slow
def test_calibrate_measures_ceilings_and_later_runs_report_the_roofline_fraction(tmp_path, monkeypatch):
    import json

    import yaml
    from typer.testing import CliRunner

    from kbench.cli import app

    monkeypatch.setenv("KBENCH_CACHE_DIR", str(tmp_path / "cache"))
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump(fast_config().model_dump()))
    cli = CliRunner(env={"COLUMNS": "200"})
    result = cli.invoke(app, ["calibrate", "--device", "cpu", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    ceilings = json.loads(result.output.strip().splitlines()[-1])
    assert ceilings["copy_gbs"] > 0 and ceilings["gemm_tflops"]["fp32"] > 0
    assert ceilings["kernel_agreement"] == {}  # kernel timing needs CUDA
    assert (tmp_path / "cache" / "calibration.json").exists()
    problem = str(PROBLEMS / "affine_relu.py")
    solution = str(PROBLEMS.parent / "solutions" / "affine_relu" / "correct_torch.py")
    verified = cli.invoke(
        app, ["verify", problem, "-s", solution, "--device", "cpu", "--config", str(config), "--json"]
    )
    line = json.loads(verified.output.strip().splitlines()[-1])
    assert line["verdict"] == "correct"
    # The roofline floor is the larger of the bytes at the copy bandwidth and the products at the fastest rate.
    assert line["matrix_flops"] == 2 * 16 * 32 * 24  # the fixture's one Linear: 2 x batch x in x out
    fastest = max(ceilings["gemm_tflops"].values()) * 1e12
    assert line["compute_floor_ms"] == pytest.approx(line["matrix_flops"] / fastest * 1e3)
    moved = 4 * (16 * 32 + 16 * 24 + 32 * 24 + 24)  # input, output, weight and bias, fp32
    memory_floor_ms = moved / (ceilings["copy_gbs"] * 1e9) * 1e3
    expected = max(memory_floor_ms, line["compute_floor_ms"]) / line["new_ms"]
    assert line["roofline_fraction"] == pytest.approx(expected, rel=1e-6)
