"""The float64 accuracy rule (docs/verdicts.md, "Matching outputs"): an element matches when it is within tolerance
of the reference's float64 evaluation, or within C x PyTorch fp32's own largest error on that output of it. A naive
sequential-K fp32 matrix product passes; one wrong element among 16M, a half-precision output and an output 1e-3 off
fail. The kernelbench policy is allclose against the fp32 reference alone."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pytest
import torch
from conftest import PROBLEMS, fast_config, run_fixture

from kbench.catalog import read_problem
from kbench.compare import FP32_ERROR, Comparison, Exact, compare_records, compare_tensor, exact_record, fp32_error
from kbench.config import AccuracyConfig, ConfigError, KbenchConfig, Tolerance, load_config
from kbench.results import JobResult, Verdict
from kbench.runner import Runner

REPO = Path(__file__).resolve().parent.parent
LONG_MATMUL = read_problem(PROBLEMS / "long_matmul.py")
FACTOR = KbenchConfig().accuracy.fp32_error_factor


def tolerance(dtype: str) -> Tolerance:
    return KbenchConfig().tolerance_for(dtype)


def sequential_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A naive fp32 kernel's answer: acc = fma(a[i, k], b[k, j], acc), K in order (the fixture solution's method;
    on an H200 it matches such a CUDA kernel bit for bit). The product of two fp32 values is exact in double."""
    a64, b64 = a.double(), b.double()
    acc = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32)
    for k in range(a.shape[1]):
        acc = torch.addr(acc.double(), a64[:, k], b64[k]).float()
    return acc


class Matmul:
    """One fp32 matrix product: PyTorch's answer (r32), the float64 evaluation (r64) and the judging helpers."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b
        self.r32 = a @ b
        self.r64 = a.double() @ b.double()
        self.error = fp32_error(self.r32, self.r64)

    @cached_property
    def sequential(self) -> torch.Tensor:
        return sequential_matmul(self.a, self.b)

    def float64_rule(self, answer: torch.Tensor) -> Comparison:
        assert self.error is not None
        return compare_tensor(answer, self.r32, tolerance, Exact(self.r64, self.error, FACTOR))

    def kernelbench_rule(self, answer: torch.Tensor) -> Comparison:
        return compare_tensor(answer, self.r32, tolerance)


@pytest.fixture(scope="module")
def long_k() -> Matmul:
    """K = 4096 as in KernelBench level 1's 16 and 17 (the fixture problem's inputs)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(128, 4096, generator=generator) * 2
    b = torch.randn(4096, 128, generator=generator) * 2
    return Matmul(a, b)


@pytest.fixture(scope="module")
def sixteen_million() -> Matmul:
    """A 4096 x 4096 output (16M elements) of a short product, cheap to evaluate in float64."""
    generator = torch.Generator().manual_seed(1)
    return Matmul(torch.randn(4096, 64, generator=generator), torch.randn(64, 4096, generator=generator))


def test_a_naive_sequential_k_product_passes_the_float64_rule(long_k: Matmul):
    answer = long_k.sequential
    result = long_k.float64_rule(answer)
    assert result.ok, result.reason
    # ... though allclose against the fp32 reference fails it, and so did the float64 second chance kbench gave
    # before (allclose against the float64 evaluation rounded to fp32): elements near zero, just outside atol.
    kernelbench = long_k.kernelbench_rule(answer)
    assert not kernelbench.ok and "outside atol" in kernelbench.reason
    assert result.outside_fp32.startswith(kernelbench.reason)
    assert result.outside_fp32.endswith(f"PyTorch fp32 itself is up to {long_k.error:.3g} off the float64 evaluation")
    assert not compare_tensor(answer, long_k.r64.float(), tolerance).ok
    # Its error really is larger than PyTorch's, but by less than the factor, everywhere the tolerance does not
    # already cover it.
    distance = (answer.double() - long_k.r64).abs()
    assert long_k.error is not None and distance.max() > long_k.error
    near_zero = distance > 1e-4 + 1e-4 * long_k.r64.abs()
    assert near_zero.any() and distance[near_zero].max() < FACTOR * long_k.error


def test_pytorchs_own_answer_passes(long_k: Matmul):
    assert long_k.float64_rule(long_k.r32.clone()).ok


@pytest.mark.parametrize("wrong", ["zeroed", "off by 1e-3 relative"])
def test_one_wrong_element_among_16m_fails(sixteen_million: Matmul, wrong: str):
    answer = sixteen_million.r32.clone()
    flat = answer.view(-1)
    index = int(sixteen_million.r32.abs().argmax())  # where a relative error is largest in absolute terms
    flat[index] = 0.0 if wrong == "zeroed" else flat[index] * (1 + 1e-3)
    result = sixteen_million.float64_rule(answer)
    assert not result.ok
    assert result.reason.startswith(f"1 of {16 * 1024 * 1024} elements outside atol"), result.reason


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_an_output_rounded_through_half_precision_fails(long_k: Matmul, half: torch.dtype):
    result = long_k.float64_rule(long_k.r32.to(half).float())
    assert not result.ok and "outside atol" in result.reason, result.reason


def test_an_output_1e3_off_relative_everywhere_fails(long_k: Matmul):
    result = long_k.float64_rule(long_k.r32 * (1 + 1e-3))
    assert not result.ok and "outside atol" in result.reason, result.reason
    assert not long_k.kernelbench_rule(long_k.r32 * (1 + 1e-3)).ok


def test_with_fp32_exact_the_tolerance_alone_decides():
    ref = torch.tensor([0.0, 1.0, -3.0, 1000.0])  # exact in fp32: E = 0
    exact = Exact(ref.double(), fp32_error(ref, ref.double()) or 0.0, FACTOR)
    assert exact.fp32_error == 0.0
    assert compare_tensor(ref + 5e-5, ref, tolerance, exact).ok
    assert not compare_tensor(ref + 2e-4, ref, tolerance, exact).ok  # beyond atol + rtol * 0 at the zero


def test_nan_and_inf_placement_is_judged_against_the_fp32_reference():
    big = torch.tensor([3.0e38, 1.0])
    ref = big * 2  # overflows in fp32
    exact = Exact(big.double() * 2, fp32_error(ref, big.double() * 2) or 0.0, FACTOR)
    assert compare_tensor(ref.clone(), ref, tolerance, exact).ok
    assert "Inf placement" in compare_tensor(torch.tensor([3.4e38, 2.0]), ref, tolerance, exact).reason
    nan = torch.tensor([float("inf"), float("nan")])
    assert "NaN in 1 places" in compare_tensor(nan, ref, tolerance, exact).reason


def test_comparing_leaves_every_tensor_as_it_was():
    ref = torch.tensor([-2.0, 0.5, -1e-3], dtype=torch.float64)  # float64 outputs: .double() is no copy
    new, exact = ref - 1e-9, ref.clone()
    copies = [t.clone() for t in (new, ref, exact)]
    assert compare_tensor(new, ref, tolerance, Exact(exact, 0.0, FACTOR)).ok
    assert all(torch.equal(t, c) for t, c in zip((new, ref, exact), copies, strict=True))


def test_a_half_precision_output_keeps_its_tolerance():
    generator = torch.Generator().manual_seed(2)
    a = torch.randn(32, 256, generator=generator).half()
    b = torch.randn(256, 32, generator=generator).half()
    ref, r64 = (a.float() @ b.float()).half(), a.double() @ b.double()
    exact = Exact(r64, fp32_error(ref, r64) or 0.0, FACTOR)
    assert 0.0 < exact.fp32_error < 0.05  # fp16's own rounding of values around 16
    assert compare_tensor(ref.clone(), ref, tolerance, exact).ok
    assert compare_tensor(r64.half(), ref, tolerance, exact).ok
    assert not compare_tensor((r64 * 1.05).half(), ref, tolerance, exact).ok


def test_records_carry_pytorchs_error_measured_before_rounding(long_k: Matmul):
    record, exact = {"tensors": [long_k.r32], "structure": "tensor"}, {"tensors": [long_k.r64], "structure": "tensor"}
    kept = exact_record(exact, record, narrow=True)
    assert kept["tensors"][0].dtype == torch.float32 and kept[FP32_ERROR] == [long_k.error]
    assert exact_record(exact, record, narrow=False)["tensors"][0].dtype == torch.float64
    answer = {"tensors": [long_k.sequential], "structure": "tensor"}
    assert compare_records(answer, record, tolerance, kept, FACTOR).ok
    assert compare_records(answer, record, tolerance, exact, FACTOR).ok  # E measured on the spot
    assert not compare_records(answer, record, tolerance).ok  # no float64 evaluation: the kernelbench rule


def test_the_policy_is_a_config_setting(tmp_path: Path):
    assert KbenchConfig().accuracy == AccuracyConfig(policy="float64", fp32_error_factor=4.0)
    path = tmp_path / "kernelbench.yaml"
    path.write_text("accuracy: {policy: kernelbench}\n")
    assert load_config(path).accuracy.policy == "kernelbench"
    path.write_text("accuracy: {policy: loose}\n")
    with pytest.raises(ConfigError, match=r"accuracy\.policy"):
        load_config(path)
    assert load_config(REPO / "configs" / "default.yaml").accuracy.policy == "float64"


def _judged(config: KbenchConfig) -> dict[str, JobResult]:
    with Runner(config, "cpu") as runner:
        return {name: run_fixture(runner, LONG_MATMUL, name) for name in ("sequential_k", "off_by_1e3")}


@pytest.fixture(scope="module")
def by_float64() -> dict[str, JobResult]:
    return _judged(fast_config())


@pytest.fixture(scope="module")
def by_kernelbench() -> dict[str, JobResult]:
    return _judged(fast_config().model_copy(update={"accuracy": AccuracyConfig(policy="kernelbench")}))


def test_a_naive_sequential_k_solution_is_correct_by_default(by_float64: dict[str, JobResult]):
    result = by_float64["sequential_k"]
    assert result.verdict == Verdict.CORRECT, result.reason
    assert any("passed by the float64 rule that allclose against the fp32" in note for note in result.notes)
    # Reported against the fp32 reference, as always: beyond atol there.
    assert result.max_abs_error is not None and result.max_abs_error > 1e-4


def test_the_same_solution_is_incorrect_by_kernelbench_rules(by_kernelbench: dict[str, JobResult]):
    result = by_kernelbench["sequential_k"]
    assert result.verdict == Verdict.INCORRECT and "outside atol" in result.reason, result.reason


@pytest.mark.parametrize("policy", ["float64", "kernelbench"])
def test_an_answer_1e3_off_is_incorrect_under_both_policies(
    by_float64: dict[str, JobResult], by_kernelbench: dict[str, JobResult], policy: str
):
    result = (by_float64 if policy == "float64" else by_kernelbench)["off_by_1e3"]
    assert result.verdict == Verdict.INCORRECT and "outside atol" in result.reason, result.reason


def test_fp32_slices_are_tallied_in_fp32_exactly_as_in_double():
    from kbench.compare import _Tally, _tally_narrow, _tally_wide

    torch.manual_seed(0)
    ref = torch.randn(1 << 16) * 10
    new = ref + torch.randn_like(ref) * 1e-3  # many elements outside atol = rtol = 1e-4, many inside
    truth = (ref.double() + 1e-6).float()
    tol = Tolerance(atol=1e-4, rtol=1e-4)
    narrow, wide = _Tally(), _Tally()
    kept = [t.clone() for t in (new, ref, truth)]
    assert _tally_narrow(narrow, new, ref, truth, tol, 3e-4)
    _tally_wide(wide, new, ref, truth, tol, 3e-4)
    assert all(torch.equal(a, b) for a, b in zip(kept, (new, ref, truth), strict=True))  # compared, never changed
    assert narrow.not_close == wide.not_close > 10_000 and narrow.beyond == wide.beyond > 10_000
    for field in ("max_abs", "max_rel", "max_abs_fp64"):
        assert getattr(narrow, field) == pytest.approx(getattr(wide, field), rel=1e-6), field
    # A float64 evaluation (the trials') is rounded to fp32 first: half an ulp moves only elements that close to a
    # bound.
    narrow, wide = _Tally(), _Tally()
    assert _tally_narrow(narrow, new, ref, truth.double() + 1e-7, tol, 3e-4)
    _tally_wide(wide, new, ref, truth.double() + 1e-7, tol, 3e-4)
    assert narrow.beyond == pytest.approx(wide.beyond, rel=1e-3) and narrow.not_close == wide.not_close
    # Not finite, or a difference that overflows fp32: the double path takes the slice, and counts it.
    for bad in (float("nan"), float("inf")):
        spoiled = new.clone()
        spoiled[5] = bad
        assert not _tally_narrow(_Tally(), spoiled, ref, truth, tol, 3e-4)
    huge = torch.full((4,), 3e38)
    untouched = _Tally()
    assert not _tally_narrow(untouched, huge, -huge, -huge, tol, 0.0) and untouched == _Tally()
    _tally_wide(wide := _Tally(), huge, -huge, -huge, tol, 0.0)
    assert wide.beyond == 4 and wide.not_close == 4


def test_pytorch_fp32_error_leaves_out_elements_not_finite_in_either():
    r32 = torch.tensor([1.0, float("inf"), 3.0, float("nan")])
    r64 = torch.tensor([1.0 + 2**-30, float("inf"), 3.0 - 2**-28, 4.0], dtype=torch.float64)
    assert fp32_error(r32, r64) == pytest.approx(2**-28)
    assert fp32_error(r32[[0, 2]], r64[[0, 2]]) == pytest.approx(2**-28)  # all finite: the same, one pass fewer
    assert fp32_error(torch.tensor([float("nan")]), torch.tensor([1.0], dtype=torch.float64)) == 0.0
