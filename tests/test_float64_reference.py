"""The float64 rule (docs/verdicts.md, "Matching outputs"): outputs close to the reference's float64 evaluation pass
even where the fp32 reference is the inexact one; outputs further from it than the tolerance and 4 x PyTorch fp32's
own error, or right only on the weights a solution cached, still fail."""

from __future__ import annotations

import pytest
from conftest import PROBLEMS, fast_config, run_fixture

from kbench.catalog import read_problem
from kbench.config import IntegrityConfig
from kbench.output_checks import KERNELBENCH_FALLBACK
from kbench.results import JobResult, Verdict
from kbench.runner import Runner

ROUNDED = read_problem(PROBLEMS / "rounded_offset.py")


@pytest.fixture(scope="module")
def judged() -> dict[str, JobResult]:
    with Runner(fast_config(), "cpu") as runner:
        names = ("exact", "off_by_a_little", "off_by_more", "stale_exact")
        return {name: run_fixture(runner, ROUNDED, name) for name in names}


def test_an_answer_more_exact_than_the_fp32_reference_is_correct(judged: dict[str, JobResult]):
    exact = judged["exact"]
    assert exact.verdict == Verdict.CORRECT, exact.reason
    # It passed against float64 where fp32 failed it, on the trials, the timed outputs and the perturbed trials.
    for kind in ("trial", "timed", "perturbed"):
        note = f"{kind} output(s) passed by the float64 rule that allclose against the fp32 reference"
        assert any(note in line for line in exact.notes), exact.notes
    # Reported against the fp32 reference, the inexact one here.
    assert exact.max_abs_error is not None and exact.max_abs_error > 1e-4
    assert exact.new_error_fp64 is not None and exact.ref_error_fp64 is not None
    assert exact.new_error_fp64 * 100 < exact.ref_error_fp64


def test_an_answer_wrong_against_both_evaluations_is_incorrect(judged: dict[str, JobResult]):
    wrong = judged["off_by_more"]
    assert wrong.verdict == Verdict.INCORRECT and "outside atol" in wrong.reason, wrong.reason
    assert "4 x PyTorch fp32's own error" in wrong.reason


def test_an_answer_as_far_from_float64_as_pytorchs_own_fp32_is_correct(judged: dict[str, JobResult]):
    # Shifted by 1e-3: outside atol of both evaluations, but the fp32 reference itself is up to 4.9e-4 off the
    # float64 one here, and 1e-3 is within 4 times that.
    close = judged["off_by_a_little"]
    assert close.verdict == Verdict.CORRECT, close.reason


def test_stale_weights_are_caught_though_trials_pass_against_float64(judged: dict[str, JobResult]):
    stale = judged["stale_exact"]
    assert stale.verdict == Verdict.INCORRECT and "stale_weights" in stale.flags, (stale.reason, stale.flags)


def test_without_the_float64_audit_only_the_fp32_reference_counts():
    config = fast_config().model_copy(update={"integrity": IntegrityConfig(audit_float64=False)})
    with Runner(config, "cpu") as runner:
        exact = run_fixture(runner, ROUNDED, "exact")
    assert exact.verdict == Verdict.INCORRECT and "outside atol" in exact.reason, exact.reason
    assert KERNELBENCH_FALLBACK in exact.notes


def test_the_reference_worker_hands_over_its_float64_evaluations_measured_and_rounded():
    """PyTorch fp32's own error on each output, and the reference's error against float64, are measured in the
    reference worker at full precision; the parent holds the evaluations rounded to fp32 and measures nothing."""
    import torch

    from kbench.audit import worst_relative_error
    from kbench.compare import FP32_ERROR
    from kbench.spec import TRIAL

    with Runner(fast_config(), "cpu") as runner:
        reference = runner.references.get(ROUNDED, {})
    exact = reference.float64[TRIAL]
    assert exact and all(t.dtype == torch.float32 for record in exact for t in record["tensors"])
    assert all(isinstance(record[FP32_ERROR], list) and record[FP32_ERROR][0] > 0 for record in exact)
    # At full precision the reference's error is the one measured against the rounded evaluations, to within the
    # rounding (half an fp32 ulp, relative 6e-8).
    assert reference.float64_error is not None and reference.float64_error > 1e-5
    assert reference.float64_error == pytest.approx(worst_relative_error(reference.trials, exact), abs=1e-7)
