"""The KernelBench problems shipped with kbench: found with their sizes, runnable on the CPU, and solved."""

from __future__ import annotations

import pytest
from conftest import fast_config

from kbench.catalog import Catalog
from kbench.results import Verdict
from kbench.runner import Job, Runner, effective_overrides

# Full-size constants (as in KernelBench) and a function of the small sizes giving the output shape.
PROBLEMS = {
    "45_Gemm_Sigmoid_LogSumExp": (
        {"batch_size": 16384, "input_size": 2048, "hidden_size": 4096, "output_size": 1024},
        lambda s: (s["batch_size"],),
    ),
    "56_Matmul_Sigmoid_Sum": (
        {"batch_size": 128, "input_size": 32768, "hidden_size": 32768},
        lambda s: (s["batch_size"], 1),
    ),
    "18_Matmul_Sum_Max_AvgPool_LogSumExp_LogSumExp": (
        {"batch_size": 1024, "in_features": 8192, "out_features": 8192},
        lambda s: (s["batch_size"], 1),
    ),
    "64_Gemm_LogSumExp_LeakyReLU_LeakyReLU_GELU_GELU": (
        {"batch_size": 1024, "in_features": 8192, "out_features": 8192},
        lambda s: (s["batch_size"], 1),
    ),
    "33_Gemm_Scale_BatchNorm": (
        {"batch_size": 1024, "in_features": 8192, "out_features": 8192, "scale_shape": (8192,)},
        lambda s: (s["batch_size"], s["out_features"]),
    ),
}


@pytest.fixture(scope="module")
def runner():
    with Runner(fast_config(), "cpu") as shared:
        yield shared


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_problem_is_listed_with_its_sizes(name: str):
    listed = {p.name: p for p in Catalog().list_problems()}
    assert name in listed
    problem = listed[name]
    full, _ = PROBLEMS[name]
    assert problem.small_sizes, "a problem shipped with kbench declares KBENCH_SMALL_SIZES"
    assert set(problem.small_sizes) <= set(problem.constants)  # small sizes name real constants
    constants = Catalog().resolve_problem(name).constants
    assert {key: constants.get(key) for key in full} == full


def test_scale_shape_follows_out_features():
    problem = Catalog().resolve_problem("33_Gemm_Scale_BatchNorm")
    assert problem.constants["scale_shape"] == (problem.constants["out_features"],)
    assert tuple(problem.small_sizes["scale_shape"]) == (problem.small_sizes["out_features"],)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_reference_runs_on_the_cpu_at_small_sizes(runner: Runner, name: str):
    problem = Catalog().resolve_problem(name)
    sizes = effective_overrides(problem, "cpu", {})
    assert sizes == problem.small_sizes
    reference = runner.references.get(problem, sizes)
    assert reference.error is None, (reference.error, reference.detail[-2000:])
    _, expected_shape = PROBLEMS[name]
    assert len(reference.trials) == runner.config.trials
    for record in reference.trials:
        (tensor,) = record["tensors"]
        assert tuple(tensor.shape) == expected_shape(sizes)
        assert tensor.isfinite().all()
    assert reference.timing_ms and all(ms > 0 for ms in reference.timing_ms)


@pytest.mark.slow
def test_cpp_rowsum_gemv_solves_problem_18(runner: Runner):
    catalog = Catalog()
    problem = catalog.resolve_problem("18_Matmul_Sum_Max_AvgPool_LogSumExp_LogSumExp")
    solutions = {s.name: s for s in catalog.registered_solutions(problem)}
    solution = solutions["cpp_rowsum_gemv"]
    assert solution.devices == ("cpu",)
    result = runner.run(Job(problem, solution, effective_overrides(problem, "cpu", {})))
    assert result.verdict == Verdict.CORRECT, (result.reason, result.detail[-2000:])
    assert result.weights == "by_name"
    assert result.max_abs_error is not None and result.max_abs_error < 1e-4
