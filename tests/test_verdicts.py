"""Every verdict from a real worker: one fixture solution per outcome, judged by the parent."""

from __future__ import annotations

import pytest
from conftest import PROBLEMS, SOLUTIONS, fast_config, run_fixture

from kbench.catalog import read_problem, read_solution
from kbench.config import IntegrityConfig
from kbench.results import JobResult, Verdict
from kbench.runner import Job, Runner
from kbench.sandbox import landlock_abi

PROBLEM = read_problem(PROBLEMS / "affine_relu.py")
# One case of each kind runs in the quick `pytest`; the rest are `slow` (make test and CI run them).
SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def runner():
    # run_s is short so the hanging fixture costs seconds, yet long enough for a cold torch import.
    with Runner(fast_config(run_s=15.0), "cpu") as shared:
        yield shared


def run(runner: Runner, name: str) -> JobResult:
    return run_fixture(runner, PROBLEM, name)


@pytest.mark.parametrize(
    ("fixture", "verdict", "reason_part"),
    [
        ("wrong_values", Verdict.INCORRECT, "outside atol"),
        pytest.param("wrong_shape", Verdict.INCORRECT, "shape (1, 16, 24) != reference (16, 24)", marks=SLOW),
        pytest.param("nan_output", Verdict.INCORRECT, "NaN in 1 places", marks=SLOW),
        pytest.param("forged_stdout", Verdict.INCORRECT, "outside atol", marks=SLOW),
        ("syntax_error", Verdict.LOAD_ERROR, "SyntaxError"),
        pytest.param("no_modelnew", Verdict.LOAD_ERROR, "no class ModelNew", marks=SLOW),
        ("forward_raises", Verdict.RUNTIME_ERROR, "kernel launch failed on purpose"),
        ("segfault", Verdict.CRASH, "killed by SIGSEGV without a result"),
        pytest.param("exit_zero", Verdict.CRASH, "exited with status 0 without a result", marks=SLOW),
    ],
)
def test_failing_solutions_get_their_verdict(runner: Runner, fixture: str, verdict: Verdict, reason_part: str):
    result = run(runner, fixture)
    assert result.verdict == verdict, (result.reason, result.detail[-2000:])
    assert reason_part in result.reason
    assert result.speedup is None  # only a correct solution has a speedup


def test_a_solution_whose_trials_are_wrong_is_incorrect_and_not_timed(runner: Runner):
    result = run(runner, "wrong_values")
    assert result.verdict == Verdict.INCORRECT and "outside atol" in result.reason, result.reason
    # The partner found the answers wrong before the turns: no round ran, and no timing is missed or refused.
    assert result.turn_rounds == 0 and result.new_ms is None and "bad_timing" not in result.flags, result.flags
    assert any(note.startswith("not timed: the reference partner found") for note in result.notes), result.notes


def test_a_job_whose_turns_were_skipped_is_never_correct(runner: Runner, monkeypatch: pytest.MonkeyPatch):
    """Skipping rests on the partner's word that the trials are wrong. Where the parent's own judgement of the
    trials finds them right (here the parent skips the turns of a correct solution), the missing timing is refused."""
    import kbench.turns

    monkeypatch.setattr(kbench.turns._Driver, "trials_wrong", lambda self: True)
    result = run(runner, "correct_torch")
    assert result.verdict == Verdict.REJECTED and "bad_timing" in result.flags, (result.reason, result.flags)
    assert result.turn_rounds == 0 and result.speedup is None


@pytest.mark.slow
def test_a_solution_that_hangs_in_its_trials_costs_the_step_limit_not_the_run_phase():
    with Runner(fast_config(run_s=120.0, step_s=3.0), "cpu") as runner:
        result = run(runner, "hang")
    assert result.verdict == Verdict.TIMEOUT, result.reason
    assert "within 3 s in the run phase's trials step (timeouts.step_s)" in result.reason, result.reason
    assert result.stage_s["solution_run"] < 20, result.stage_s


@pytest.mark.slow
def test_a_timeout_says_where_the_worker_was_stuck(runner: Runner):
    result = run(runner, "hang")
    assert result.verdict == Verdict.TIMEOUT and "in the run phase" in result.reason, result.reason
    # The worker's stacks, written to its log when it ran out of time: the solution's own line first.
    assert 'hang.py", line 14 in forward' in result.detail, result.detail[-3000:]
    assert "untrusted/worker.py" in result.detail


@pytest.mark.slow
def test_a_slow_start_before_any_solution_code_is_not_the_solutions_timeout(tmp_path):
    # The problem file takes longer to import than the run limit allows: that is the workers' own start (torch,
    # the problem, the seeded weights), before any solution code runs, and it is held to the reference's limit.
    # (On the H200, torch's import beside three CUDA builds once outlasted a 45 s run limit.)
    problem = tmp_path / "affine_relu.py"
    problem.write_text("import time\n\ntime.sleep(8)\n" + (PROBLEMS / "affine_relu.py").read_text())
    with Runner(fast_config(run_s=6.0), "cpu") as runner:
        result = runner.run(Job(read_problem(problem), read_solution(SOLUTIONS / "affine_relu" / "correct_torch.py")))
    assert result.verdict == Verdict.CORRECT, (result.reason, result.detail[-2000:])


def test_correct_solution_passes_with_errors_and_timing(runner: Runner):
    result = run(runner, "correct_torch")
    assert result.verdict == Verdict.CORRECT, result.reason
    assert result.flags == []
    assert result.weights == "by_name"
    assert result.max_abs_error is not None and result.max_abs_error < 1e-4
    assert result.atol == 1e-4 and result.rtol == 1e-4
    assert result.ref_ms > 0 and result.new_ms > 0 and result.speedup == pytest.approx(result.ref_ms / result.new_ms)
    assert result.new_timing_count == 3 and result.ref_timing_count == 3
    stages = {"reference", "solution_load", "solution_wait", "solution_build", "solution_run", "judge"}
    assert set(result.stage_s) == stages
    assert result.stage_s["solution_run"] > 0 and sum(result.stage_s.values()) <= result.wall_s


def test_renamed_parameters_are_copied_by_position(runner: Runner):
    result = run(runner, "correct_renamed")
    assert result.verdict == Verdict.CORRECT, result.reason
    assert result.weights == "by_position"


def test_a_parameter_nothing_matches_leaves_the_weight_check_unanswered(runner: Runner):
    result = run(runner, "transposed_weight")  # more in test_weights.py
    assert result.verdict == Verdict.REJECTED and result.flags == ["unchecked_weights"], result.reason
    assert result.weights == "partial"


def test_broken_reference_blames_the_reference_not_the_solution(runner: Runner):
    problem = read_problem(PROBLEMS / "broken_reference.py")
    solution = read_solution(SOLUTIONS / "affine_relu" / "correct_torch.py")
    result = runner.run(Job(problem, solution))
    assert result.verdict == Verdict.RUNTIME_ERROR
    assert "reference failed" in result.reason and "reference is broken" in result.reason
    assert result.flags == ["reference_failed"]


@pytest.mark.slow
def test_cpp_compile_error_keeps_the_compiler_output(runner: Runner):
    result = run(runner, "cpp_compile_error")
    assert result.verdict == Verdict.COMPILE_ERROR, result.reason
    assert "this_method_does_not_exist" in result.detail


@pytest.mark.parametrize("step", ["first_look", "judge_outputs"])  # as the workers end; judging, maybe beside
def test_a_failure_inside_kbench_is_reported_and_the_run_goes_on(runner: Runner, monkeypatch, step: str):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("kbench bug")

    monkeypatch.setattr(f"kbench.runner.{step}", broken)
    result = run(runner, "correct_torch")
    assert result.verdict == Verdict.RUNTIME_ERROR and result.flags == ["harness_error"]
    assert "ZeroDivisionError: kbench bug" in result.detail


@pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock")
def test_a_worker_that_fails_before_the_solution_loads_is_a_harness_error_not_the_solutions(tmp_path):
    """The solution's build folder cannot be made (its cache's `extensions` is a file): a confined worker makes
    it before the gate, so it fails before any solution code runs, and the result blames kbench's side; an
    unconfined one makes it as it builds, so the same failure is the build's."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "extensions").write_text("not a folder")
    solution = read_solution(SOLUTIONS / "affine_relu" / "correct_torch.py")
    results = {}
    for setting in ("on", "off"):
        config = fast_config().model_copy(update={"integrity": IntegrityConfig(sandbox=setting)})
        with Runner(config, "cpu", cache_root=cache) as runner:
            results[setting] = runner.run(Job(PROBLEM, solution))
    before = results["on"]
    assert before.verdict == Verdict.RUNTIME_ERROR and "harness_error" in before.flags, (before.reason, before.flags)
    assert before.reason.startswith("kbench's worker failed before any solution code ran"), before.reason
    after = results["off"]
    assert after.verdict != Verdict.CORRECT and "harness_error" not in after.flags, (after.reason, after.flags)
