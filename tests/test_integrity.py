"""The cheat corpus: each hostile pattern caught with its verdict and flag, and clean controls that pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PROBLEMS, SOLUTIONS, fast_config, kept_outputs_rewritten, run_fixture, unconfined

from kbench import audit
from kbench.catalog import Problem, read_problem, read_solution
from kbench.results import JobResult, Verdict
from kbench.runner import Job, Runner

AFFINE = read_problem(PROBLEMS / "affine_relu.py")
BATCHNORM = read_problem(PROBLEMS / "linear_batchnorm.py")
SCALED_COPY = read_problem(PROBLEMS / "scaled_copy.py")
# One case of each kind runs in the quick `pytest`; the rest are `slow` (make test and CI run them).
SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def runner():
    with Runner(fast_config(run_s=30.0), "cpu") as shared:
        yield shared


def run(runner: Runner, name: str, problem: Problem = AFFINE) -> JobResult:
    return run_fixture(runner, problem, name)


@pytest.mark.parametrize(
    ("fixture", "verdict", "flag"),
    [
        pytest.param("cached_after_trials", Verdict.INCORRECT, "timed_output_mismatch", marks=SLOW),
        ("stale_weights", Verdict.INCORRECT, "stale_weights"),
        ("mutates_input", Verdict.REJECTED, "input_mutated"),
        pytest.param("reuses_output", Verdict.REJECTED, "output_reused", marks=SLOW),
        pytest.param("background_thread", Verdict.REJECTED, "thread", marks=SLOW),
        ("patches_timer", Verdict.REJECTED, "timer_tampering"),
        pytest.param("patches_comparison", Verdict.INCORRECT, "monkey_patch", marks=SLOW),
        ("forges_channel", Verdict.REJECTED, "channel_tampering"),
        ("reschedules_reference", Verdict.REJECTED, "reference_tampered"),
        pytest.param("floods_channel", Verdict.REJECTED, "channel_tampering", marks=SLOW),
        pytest.param("tensor_subclass", Verdict.REJECTED, "output_not_tensor", marks=SLOW),
    ],
)
def test_cheats_are_caught_with_their_flag(runner: Runner, fixture: str, verdict: Verdict, flag: str):
    result = run(runner, fixture)
    assert result.verdict == verdict, (result.reason, result.flags, result.detail[-1500:])
    assert flag in result.flags
    assert result.speedup is None


@pytest.mark.parametrize(
    ("fixture", "flags"),
    [
        ("doubles_in_place", {"input_mutated", "output_aliases_input"}),
        pytest.param("view_of_input", {"output_aliases_input"}, marks=SLOW),
    ],
)
def test_outputs_sharing_an_inputs_storage_are_rejected(runner: Runner, fixture: str, flags: set[str]):
    result = run(runner, fixture, SCALED_COPY)
    assert result.verdict == Verdict.REJECTED, (result.reason, result.flags)
    assert flags <= set(result.flags)
    honest = run(runner, "honest", SCALED_COPY)
    assert honest.verdict == Verdict.CORRECT and honest.flags == []


def test_outputs_rewritten_after_the_worker_reported_are_refused(runner: Runner):
    result = run(runner, "rewrites_outputs_at_exit")
    assert result.verdict == Verdict.REJECTED, (result.reason, result.flags)
    assert "output_tampered" in result.flags and "changed after the worker wrote it" in result.reason


def test_a_kept_timed_output_made_right_after_its_call_is_refused():
    result, honest = kept_outputs_rewritten("cpu")
    assert result.verdict == Verdict.INCORRECT, (result.reason, result.flags, result.detail[-1500:])
    assert "timed_output_mismatch" in result.flags and result.speedup is None
    assert honest.verdict == Verdict.CORRECT, (honest.reason, honest.flags)


def test_a_forged_protocol_message_cannot_switch_checks_off(runner: Runner):
    result = run(runner, "forges_weights_message", BATCHNORM)
    assert result.verdict in (Verdict.INCORRECT, Verdict.REJECTED), (result.reason, result.flags)
    assert "channel_tampering" in result.flags and "second 'weights' message" in result.detail


@pytest.mark.slow
def test_re_announced_phases_do_not_extend_the_timeout():
    with Runner(fast_config(run_s=5.0), "cpu") as short:
        result = run(short, "phase_keepalive")
    assert result.verdict == Verdict.TIMEOUT and result.wall_s < 30, (result.reason, result.wall_s)


@pytest.mark.slow
def test_a_process_left_behind_is_killed_with_the_worker(tmp_path, monkeypatch):
    pidfile = tmp_path / "daemon.pid"  # the daemon's pid, written by the fixture: its worker is left unconfined
    monkeypatch.setenv("KBENCH_TEST_DAEMON_PIDFILE", str(pidfile))
    with Runner(unconfined(fast_config(run_s=30.0)), "cpu") as own:
        result = run(own, "leaves_daemon")
    assert result.verdict == Verdict.CORRECT, (result.reason, result.flags)
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists(), "the daemon outlived its job"
    assert any("left running after its worker" in note for note in result.notes)


@pytest.mark.parametrize(
    ("fixture", "replaced"),
    [("patches_the_checks", "kbench.turn_taker.same"), ("rewrites_a_check", "kbench.fingerprints.same")],
)
def test_kbench_checks_replaced_in_the_solutions_process_are_caught(runner: Runner, fixture: str, replaced: str):
    """Each writes into its input after making the comparison that would show it always say "unchanged"."""
    result = run(runner, fixture)
    assert result.verdict == Verdict.REJECTED and "monkey_patch" in result.flags, (result.reason, result.flags)
    assert replaced in result.detail and result.speedup is None


def test_a_thread_the_solution_leaves_running_is_named(runner: Runner):
    result = run(runner, "keeps_a_thread")
    assert result.verdict == Verdict.REJECTED and "thread" in result.flags, (result.reason, result.flags)
    assert any("after its first checked call" in note and "solution-helper" in note for note in result.notes)


@pytest.mark.parametrize("fixture", ["pool_on_first_call", pytest.param("compiled", marks=SLOW)])
def test_a_pool_started_in_the_first_call_is_the_solutions_own(runner: Runner, fixture: str):
    """Thread pools start in the first call (torch.compile's while Inductor compiles, with a fresh Inductor cache:
    the run's build folder, or a fresh one of the test's); a thread started in a later call is flagged (above)."""
    result = run(runner, fixture)
    assert result.verdict == Verdict.CORRECT, (result.reason, result.flags, result.notes)
    assert "thread" not in result.flags, result.flags  # static_thread, the scan's second opinion, may stand


def test_a_forged_malformed_result_is_judged_not_fatal(runner: Runner):
    result = run(runner, "forges_malformed_result")
    assert result.verdict == Verdict.REJECTED, (result.reason, result.flags, result.detail[-800:])
    assert "harness_error" not in result.flags and "no output file" in result.reason


def test_unwritten_part_of_a_fresh_output_is_wrong(runner: Runner):
    result = run(runner, "unwritten_output")
    assert result.verdict == Verdict.INCORRECT, result.reason


def test_running_statistics_must_evolve_like_the_reference(runner: Runner):
    honest = run(runner, "bn_correct", BATCHNORM)
    assert honest.verdict == Verdict.CORRECT and honest.flags == [], (honest.reason, honest.flags)
    frozen = run(runner, "bn_frozen_stats", BATCHNORM)
    assert frozen.verdict == Verdict.INCORRECT and "state_mismatch" in frozen.flags
    assert "running_mean" in frozen.reason


@pytest.mark.parametrize(
    "fixture",
    ["correct_torch", pytest.param("correct_renamed", marks=SLOW), pytest.param("imports_profiler", marks=SLOW)],
)
def test_honest_solutions_raise_no_flag(runner: Runner, fixture: str):
    result = run(runner, fixture)
    assert result.verdict == Verdict.CORRECT, (result.reason, result.flags)
    assert result.flags == []
    assert result.ref_error_fp64 is not None and result.new_error_fp64 is not None
    assert result.new_error_fp64 < 1e-6


def test_precision_loss_is_flagged_even_within_tolerance(runner: Runner):
    result = run(runner, "low_precision")
    assert result.verdict == Verdict.CORRECT, result.reason  # inside atol/rtol ...
    assert "precision_loss" in result.flags  # ... but far less accurate than PyTorch fp32
    assert result.new_error_fp64 > 4 * max(result.ref_error_fp64, 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fixture", "reason"),
    [("exit_three", "exited with status 3"), ("aborts", "SIGABRT"), ("sigkill", "killed by SIGKILL")],
)
def test_any_worker_death_is_a_crash(runner: Runner, fixture: str, reason: str):
    result = run(runner, fixture)
    assert result.verdict == Verdict.CRASH and reason in result.reason


@pytest.mark.slow
def test_physics_floor_rejects_impossible_times():
    solution = read_solution(SOLUTIONS / "affine_relu" / "correct_torch.py")
    config = fast_config()
    # About 7 KB to move at 1 KB/s: a floor of seconds, far above any real call even on a loaded machine
    # (at 1 MB/s the 7 ms floor was sometimes under a CPU call's time when other jobs shared the cores).
    with Runner(config, "cpu", bandwidth_bytes_per_s=1e3) as slow_world:
        result = slow_world.run(Job(AFFINE, solution))
    assert result.verdict == Verdict.REJECTED and "implausible_speed" in result.flags
    assert result.floor_ms > result.new_ms
    with Runner(config, "cpu", bandwidth_bytes_per_s=1e15) as fast_world:
        result = fast_world.run(Job(AFFINE, solution))
    assert result.verdict == Verdict.CORRECT and result.floor_ms < result.new_ms


def test_degenerate_problem_warns_and_a_normal_one_does_not(runner: Runner):
    saturated = runner.references.get(read_problem(PROBLEMS / "saturated_sigmoid.py"), {})
    assert len(saturated.warnings) == 2
    assert runner.references.get(AFFINE, {}).warnings == []


def test_relative_error_and_precision_rule():
    import torch

    exact = {"tensors": [torch.tensor([1.0, 2.0, 2.0]).double()]}
    assert audit.relative_error({"tensors": [torch.tensor([1.0, 2.0, 2.0])]}, exact) == 0.0
    assert audit.relative_error({"tensors": [torch.tensor([1.0, 2.0, 2.3])]}, exact) == pytest.approx(0.1)
    # Elements not finite in either are left out; float64 tensors (the kept reference's own) are never changed.
    answer = torch.tensor([1.0, float("nan"), 2.3], dtype=torch.float64)
    assert audit.relative_error({"tensors": [answer]}, exact) == pytest.approx(0.3 / 5**0.5)
    assert torch.equal(exact["tensors"][0], torch.tensor([1.0, 2.0, 2.0]).double())
    assert answer[2] == 2.3
    assert audit.precision_loss(1e-5, 1e-7, 4.0, 1e-6)
    assert not audit.precision_loss(3e-6, 1e-7, 4.0, 1e-6)  # both under the floor's reach


@pytest.mark.slow
def test_without_perturbed_trials_no_weight_copy_is_made_and_judging_still_works():
    from kbench.config import IntegrityConfig

    config = fast_config().model_copy(update={"integrity": IntegrityConfig(perturbation_trials=0)})
    with Runner(config, "cpu") as runner_without:
        honest = run(runner_without, "correct_torch")
        stale = run(runner_without, "stale_weights")
    assert honest.verdict == Verdict.CORRECT and honest.flags == []
    assert stale.verdict == Verdict.CORRECT  # what perturbation_trials: 0 gives up, as configured


def test_a_reference_file_rewritten_before_the_parent_loads_it_is_refused(tmp_path: Path):
    """Solution code can run while a reference worker writes its files (a build worker imports a solution; another
    GPU's job runs one): a trial output of the reference rewritten to what a wrong solution answers would make that
    solution right. The parent loads only what the reference worker announced."""
    import torch

    from kbench import tensor_files
    from kbench.reference import load_reference
    from kbench.spec import TRIAL, WorkerSpec, bytes_digest, output_path, state_path

    spec = WorkerSpec(str(tmp_path / "p.py"), "cpu", 0, 2, {}, str(tmp_path), perturbation_trials=0)
    announced = {}

    def write(path: Path, record: dict) -> None:
        content = b"".join(bytes(piece) for piece in tensor_files.encode(record))
        path.write_bytes(content)
        announced[path.name] = (bytes_digest(content), len(content))

    for index in range(2):
        write(output_path(tmp_path, "ref", TRIAL, index), {"structure": "tensor", "tensors": [torch.ones(4)]})
    for role in ("ref", "ref_initial"):
        write(state_path(tmp_path, role), {})
    honest = load_reference(tmp_path, spec, {}, announced)
    assert honest.error is None and torch.equal(honest.trials[1]["tensors"][0], torch.ones(4))

    rewritten = output_path(tmp_path, "ref", TRIAL, 1)
    rewritten.write_bytes(
        b"".join(bytes(p) for p in tensor_files.encode({"structure": "tensor", "tensors": [torch.zeros(4)]}))
    )
    refused = load_reference(tmp_path, spec, {}, announced)
    assert refused.error is not None and "changed after the worker wrote it" in refused.error, refused.error
    assert not refused.trials
