"""Matching ModelNew's tensors to the reference's (issue #17): by name, position, value or unique shape, and
what the judge does with tensors nothing matches. Each cheat that unmatched tensors once hid is refused here,
beside an honest solution of the same shape that still passes."""

from __future__ import annotations

import pytest
import torch
from conftest import PROBLEMS, fast_config, run_fixture
from torch import nn

from kbench.catalog import Problem, read_problem
from kbench.results import JobResult, Verdict
from kbench.runner import Runner
from kbench.weight_checks import read_weights
from kbench.weights import StateMap, copy_reference_weights, match_state

AFFINE = read_problem(PROBLEMS / "affine_relu.py")  # Linear(32 -> 24): a transposed weight has its own shape
BATCHNORM = read_problem(PROBLEMS / "linear_batchnorm.py")
SQUARE = read_problem(PROBLEMS / "square_linear.py")  # Linear(64 -> 64)


def seeded(build: type[nn.Module], *args: int) -> nn.Module:
    torch.manual_seed(0)
    return build(*args)


class LinearBN(nn.Module):
    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)
        self.bn = nn.BatchNorm1d(features)


class Renamed(nn.Module):
    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(features, features))
        self.b = nn.Parameter(torch.empty(features))


class BuffersFirst(nn.Module):
    """LinearBN's tensors under other names, ones and zeros registered so that registration order alone would
    pair them wrongly (running_var's ones before BatchNorm's weight)."""

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        linear = nn.Linear(features, features)
        self.register_buffer("var_avg", torch.ones(features))
        self.register_buffer("mean_avg", torch.zeros(features))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())


class NoRunningStats(nn.Module):
    def __init__(self, features: int = 8) -> None:
        super().__init__()
        linear = nn.Linear(features, features)
        self.gamma = nn.Parameter(torch.ones(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())


class DrawnFirst(nn.Module):
    """A parameter drawn from the seed before the Linear: the Linear's values differ from the reference's."""

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.scratch = nn.Parameter(torch.randn(1))
        self.fc = nn.Linear(features, features)


class Affine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 4)


class Transposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        linear = nn.Linear(6, 4)
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous())
        self.bias = nn.Parameter(linear.bias.detach().clone())


class TwoOfAShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(5))
        self.b = nn.Parameter(torch.randn(5))


class Stateless(nn.Module):
    pass


def targets_by_name(state: StateMap, candidate: nn.Module) -> dict[str, str]:
    """reference name -> the name of the ModelNew tensor that stands for it."""
    names = {id(t): n for n, t in [*candidate.named_parameters(), *candidate.named_buffers()]}
    return {ref: names[id(target)] for ref, target in state.targets.items()}


# --- matching -------------------------------------------------------------------------------------------


def test_same_names_and_shapes_match_by_name():
    reference, candidate = seeded(LinearBN), seeded(LinearBN)
    state = match_state(reference, candidate)
    assert state.mode == "by_name" and state.unmatched == []
    assert targets_by_name(state, candidate)["bn.running_var"] == "bn.running_var"


def test_shapes_in_order_match_by_position():
    reference, candidate = seeded(nn.Linear, 8, 8), Renamed()
    state = match_state(reference, candidate)
    assert state.mode == "by_position" and state.unmatched == []
    assert targets_by_name(state, candidate) == {"weight": "w", "bias": "b"}


def test_equal_values_match_and_ties_prefer_the_same_kind():
    reference, candidate = seeded(LinearBN), seeded(BuffersFirst)
    state = match_state(reference, candidate)
    assert state.mode == "by_value" and state.unmatched == []
    assert targets_by_name(state, candidate) == {
        "linear.weight": "weight",
        "linear.bias": "bias",
        "bn.weight": "gamma",  # ones: the parameter, not running_var's stand-in registered first
        "bn.bias": "beta",
        "bn.running_mean": "mean_avg",
        "bn.running_var": "var_avg",
        "bn.num_batches_tracked": "steps",
    }


def test_each_tensor_stands_for_one_reference_tensor_and_the_rest_stay_unmatched():
    reference, candidate = seeded(LinearBN), seeded(NoRunningStats)
    state = match_state(reference, candidate)
    assert state.mode == "partial"
    # Four ones/zeros vectors are taken by BatchNorm's weight and bias; the running statistics are ambiguous
    # in shape (two of them), and nothing holds the step counter.
    assert state.unmatched == ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    assert targets_by_name(state, candidate)["bn.weight"] == "gamma"


def test_a_unique_shape_matches_when_values_differ():
    reference, candidate = seeded(nn.Linear, 8, 8), seeded(DrawnFirst)
    assert not torch.equal(reference.weight, candidate.fc.weight)  # the draw before shifted the stream
    state = copy_reference_weights(reference, candidate)
    assert state.mode == "by_value"
    assert targets_by_name(state, candidate) == {"weight": "fc.weight", "bias": "fc.bias"}
    assert torch.equal(candidate.fc.weight, reference.weight) and torch.equal(candidate.fc.bias, reference.bias)


def test_a_shape_no_modelnew_tensor_has_stays_unmatched():
    reference, candidate = seeded(Affine), seeded(Transposed)
    state = match_state(reference, candidate)
    assert state.mode == "partial" and state.unmatched == ["linear.weight"]
    assert targets_by_name(state, candidate) == {"linear.bias": "bias"}


def test_a_shape_shared_by_two_tensors_is_never_guessed():
    reference, candidate = seeded(TwoOfAShape), TwoOfAShape()  # unseeded: other values
    state = match_state(reference, candidate)
    assert state.mode == "by_name"  # names still decide first
    other = nn.Module()
    other.x, other.y, other.z = (nn.Parameter(torch.randn(5)) for _ in range(3))
    state = match_state(reference, other)
    assert state.mode == "none" and state.targets == {} and state.unmatched == ["a", "b"]


def test_no_reference_tensors_is_mode_none():
    state = match_state(Stateless(), seeded(Affine))
    assert state.mode == "none" and state.targets == {} and state.unmatched == []


@pytest.mark.parametrize(
    ("message", "valid"),
    [
        ({"weights": {"mode": "partial", "matched": ["a"], "unmatched": ["b"]}}, True),
        ({"weights": "seeded_only"}, False),  # the old form
        ({"weights": {"mode": "by_name", "matched": ["a"], "unmatched": []}}, False),  # b is not accounted for
        ({"weights": {"mode": "by_name", "matched": ["a", "b"], "unmatched": ["b"]}}, False),
        ({"weights": {"mode": "made_up", "matched": ["a", "b"], "unmatched": []}}, False),
        ({"weights": {"mode": "by_name", "matched": ["a", 2], "unmatched": []}}, False),
        ({"weights": {"mode": "by_name", "matched": "ab", "unmatched": []}}, False),
        (None, False),
    ],
)
def test_the_weights_message_is_believed_only_when_well_formed(message, valid: bool):
    match = read_weights(message, {"a", "b"})
    assert match.valid == valid
    if not valid:  # counts as nothing matched: every check that needs a match stays unanswered
        assert match.mode is None and match.matched == set() and match.unmatched == {"a", "b"}


# --- end to end -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner():
    with Runner(fast_config(run_s=30.0), "cpu") as shared:
        yield shared


def run(runner: Runner, problem: Problem, name: str) -> JobResult:
    return run_fixture(runner, problem, name)


@pytest.mark.slow
@pytest.mark.parametrize(("fixture", "mode"), [("gain_first_stale", "by_value"), ("drawn_first_stale", "by_value")])
def test_a_parameter_registered_first_no_longer_hides_a_stale_weight(runner: Runner, fixture: str, mode: str):
    result = run(runner, SQUARE, fixture)
    assert result.verdict == Verdict.INCORRECT and "stale_weights" in result.flags, (result.reason, result.flags)
    assert result.weights == mode
    honest = run(runner, SQUARE, "gain_first")
    assert honest.verdict == Verdict.CORRECT and honest.flags == [], (honest.reason, honest.flags)
    assert honest.weights == "by_value"


@pytest.mark.slow
def test_batchnorm_without_running_statistics_is_incorrect_under_any_names(runner: Runner):
    result = run(runner, BATCHNORM, "own_names_no_running_stats")
    assert result.verdict == Verdict.INCORRECT and "state_mismatch" in result.flags, (result.reason, result.flags)
    assert result.weights == "partial"
    assert "bn.running_mean" in result.reason and "changes in the reference's forward" not in result.reason
    assert "change in the reference's forward, and ModelNew keeps no tensor that matches them" in result.reason


@pytest.mark.slow
def test_batchnorm_keeping_running_statistics_under_its_own_names_is_correct(runner: Runner):
    result = run(runner, BATCHNORM, "own_names_running_stats")
    assert result.verdict == Verdict.CORRECT and result.flags == [], (result.reason, result.flags)
    assert result.weights == "by_value"


@pytest.mark.slow
def test_a_weight_no_tensor_matches_leaves_the_solution_rejected(runner: Runner):
    result = run(runner, AFFINE, "transposed_weight")  # Linear's weight kept transposed, (32, 24) for (24, 32)
    assert result.verdict == Verdict.REJECTED and "unchecked_weights" in result.flags, (result.reason, result.flags)
    assert result.weights == "partial" and result.speedup is None
    assert "linear.weight" in result.reason and "linear.bias" not in result.reason
    assert "register it as a parameter or buffer with the reference's names or shapes" in result.reason
    honest = run(runner, AFFINE, "own_layout_bias_first")
    assert honest.verdict == Verdict.CORRECT and honest.flags == [], (honest.reason, honest.flags)
    assert honest.weights == "by_value"


@pytest.mark.slow
def test_replacing_the_matching_is_a_monkey_patch(runner: Runner):
    result = run(runner, SQUARE, "patches_matching")
    assert result.verdict == Verdict.REJECTED, (result.reason, result.flags)
    assert {"monkey_patch", "channel_tampering"} <= set(result.flags)
