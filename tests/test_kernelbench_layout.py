"""KernelBench's own folders run as they are: problems in ``level<L>/<P>_<Name>.py`` and a run folder of
``level_<L>_problem_<P>_sample_<S>_kernel.py`` generations, mapped onto each other with nothing renamed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import PROBLEMS, SOLUTIONS, fast_config
from typer.testing import CliRunner

from kbench.catalog import Catalog, CatalogError
from kbench.cli import app
from kbench.kernelbench_layout import Generation, KernelBenchId, parse_generation, problem_identity

CUDA_GENERATION = 'from torch.utils.cpp_extension import load_inline\ncuda_sources = ""\nclass ModelNew: pass\n'


def copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return target


@pytest.fixture
def kernelbench(tmp_path: Path) -> tuple[Path, Path]:
    """A KernelBench-shaped problems folder (levels 1 and 2, and one problem outside any level) and a flat run
    folder of generations, as KernelBench's scripts/generate_samples.py writes it."""
    problems, run = tmp_path / "KernelBench", tmp_path / "runs" / "my_run"
    copy(PROBLEMS / "affine_relu.py", problems / "level1" / "1_Affine_relu.py")
    copy(PROBLEMS / "scaled_copy.py", problems / "level1" / "2_Scaled_copy.py")
    copy(PROBLEMS / "square_linear.py", problems / "level1" / "10_Square_linear.py")
    copy(PROBLEMS / "wide_linear.py", problems / "level2" / "1_Wide_linear.py")
    copy(PROBLEMS / "rounded_offset.py", problems / "level2" / "3_Rounded_offset.py")
    copy(PROBLEMS / "linear_batchnorm.py", problems / "extra" / "1_Linear_batchnorm.py")  # not in a level folder
    copy(SOLUTIONS / "affine_relu" / "correct_torch.py", run / "level_1_problem_1_sample_0_kernel.py")
    copy(SOLUTIONS / "affine_relu" / "wrong_values.py", run / "level_1_problem_1_sample_1_kernel.py")
    (run / "level_2_problem_1_sample_0_kernel.py").write_text(CUDA_GENERATION)
    copy(SOLUTIONS / "scaled_copy" / "honest.py", run / "level_1_problem_7_sample_0_kernel.py")  # no problem 7
    copy(SOLUTIONS / "scaled_copy" / "honest.py", run / "level_1_problem_x_sample_0_kernel.py")  # misnamed
    (run / "level_1_problem_1_sample_0_prompt.txt").write_text("not a kernel")
    (run / "generation_config.yaml").write_text("level: 1\n")
    return problems, run


def solutions_by_problem(catalog: Catalog) -> dict[str, list[tuple[str, str, tuple[str, ...]]]]:
    return {
        problem.name: [(s.name, s.path.name, s.devices) for s in catalog.registered_solutions(problem)]
        for problem in catalog.list_problems()
    }


@pytest.mark.parametrize(
    ("path", "identity"),
    [
        ("KernelBench/level1/1_Square_matrix_multiplication_.py", KernelBenchId(1, 1)),
        ("KernelBench/level2/18_Matmul_Sum_Max_AvgPool_LogSumExp_LogSumExp.py", KernelBenchId(2, 18)),
        ("deep/in/level3/043_MinGPT.py", KernelBenchId(3, 43)),
        ("KernelBench/18_Matmul_Sum.py", None),  # no level folder
        ("KernelBench/level1/Square_matrix.py", None),  # no number
        ("KernelBench/level1/1.py", None),  # a number, but not KernelBench's "<P>_<Name>"
        ("KernelBench/level_1/1_Square.py", None),  # KernelBench's folders are level1, level2, ...
        ("KernelBench/level1x/1_Square.py", None),
    ],
)
def test_problem_identity_comes_from_its_folder_and_number(path: str, identity: KernelBenchId | None):
    assert problem_identity(Path(path)) == identity


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("level_1_problem_1_sample_0_kernel.py", (KernelBenchId(1, 1), "sample_0")),
        ("level_2_problem_18_sample_12_kernel.py", (KernelBenchId(2, 18), "sample_12")),
        ("level_1_problem_x_sample_0_kernel.py", None),
        ("level_1_problem_1_sample_0_prompt.txt", None),
        ("level_1_problem_1_sample_0.py", None),
        ("level_1_problem_1_sample_0_kernel.py.bak", None),
        ("my_level_1_problem_1_sample_0_kernel.py", None),
    ],
)
def test_generation_names_are_read_strictly(name: str, expected: tuple[KernelBenchId, str] | None):
    generation = parse_generation(Path("runs/r") / name)
    assert (None if generation is None else (generation.target, generation.name)) == expected


def test_generations_map_onto_their_problems_without_renaming(kernelbench: tuple[Path, Path]):
    problems, run = kernelbench
    before = sorted(p.relative_to(problems.parent) for p in problems.parent.rglob("*"))
    catalog = Catalog(problems, run)
    anywhere = ("cpu", "cuda")
    assert solutions_by_problem(catalog) == {
        "1_Affine_relu": [
            ("sample_0", "level_1_problem_1_sample_0_kernel.py", anywhere),
            ("sample_1", "level_1_problem_1_sample_1_kernel.py", anywhere),
        ],
        "2_Scaled_copy": [],
        "10_Square_linear": [],
        "1_Wide_linear": [("sample_0", "level_2_problem_1_sample_0_kernel.py", ("cuda",))],  # devices inferred
        "3_Rounded_offset": [],
        "1_Linear_batchnorm": [],  # outside a level folder: never matched, though it is "problem 1"
    }
    (solution, _) = catalog.registered_solutions(catalog.resolve_problem("1_Affine_relu"))
    assert solution.path == (run / "level_1_problem_1_sample_0_kernel.py").resolve()  # used where it lies
    assert sorted(p.relative_to(problems.parent) for p in problems.parent.rglob("*")) == before


def test_samples_are_ordered_by_number(kernelbench: tuple[Path, Path]):
    problems, run = kernelbench
    copy(run / "level_1_problem_1_sample_0_kernel.py", run / "level_1_problem_1_sample_10_kernel.py")
    copy(run / "level_1_problem_1_sample_0_kernel.py", run / "level_1_problem_1_sample_2_kernel.py")
    catalog = Catalog(problems, run)
    names = [s.name for s in catalog.registered_solutions(catalog.resolve_problem("1_Affine_relu"))]
    assert names == ["sample_0", "sample_1", "sample_2", "sample_10"]


def test_unmatched_generations_are_listed_with_the_reason(kernelbench: tuple[Path, Path]):
    problems, run = kernelbench
    unmatched = {u.path.name: u.reason for u in Catalog(problems, run).unmatched_generations()}
    assert set(unmatched) == {"level_1_problem_7_sample_0_kernel.py", "level_1_problem_x_sample_0_kernel.py"}
    assert "names level 1 problem 7" in unmatched["level_1_problem_7_sample_0_kernel.py"]
    assert "level1/7_*.py" in unmatched["level_1_problem_7_sample_0_kernel.py"]
    assert "not named level_<L>_problem_<P>_sample_<S>_kernel.py" in unmatched["level_1_problem_x_sample_0_kernel.py"]


def test_generations_of_a_problems_folder_without_levels_are_all_unmatched(tmp_path: Path):
    problems = tmp_path / "problems"
    copy(PROBLEMS / "affine_relu.py", problems / "1_Affine_relu.py")
    copy(SOLUTIONS / "affine_relu" / "correct_torch.py", tmp_path / "run" / "level_1_problem_1_sample_0_kernel.py")
    catalog = Catalog(problems, tmp_path / "run")
    assert catalog.registered_solutions(catalog.resolve_problem("1_Affine_relu")) == []
    assert [u.path.name for u in catalog.unmatched_generations()] == ["level_1_problem_1_sample_0_kernel.py"]


def test_kbench_layout_has_nothing_unmatched():
    assert Catalog().unmatched_generations() == []  # kbench's own solutions folder holds only per-problem folders


def test_two_problems_of_one_level_and_number_are_an_error(kernelbench: tuple[Path, Path]):
    problems, run = kernelbench
    twin = copy(problems / "level1" / "1_Affine_relu.py", problems / "more" / "level1" / "1_Affine_relu_again.py")
    catalog = Catalog(problems, run)
    with pytest.raises(CatalogError, match="two problems are KernelBench level 1 problem 1") as caught:
        solutions_by_problem(catalog)
    assert str((problems / "level1" / "1_Affine_relu.py").resolve()) in str(caught.value)
    assert str(twin.resolve()) in str(caught.value)
    # A duplicate that no generation names is harmless: level 2 problem 3 has none.
    copy(problems / "level2" / "3_Rounded_offset.py", problems / "more" / "level2" / "3_Rounded_again.py")
    assert catalog.registered_solutions(catalog.resolve_problem("3_Rounded_again")) == []


def test_names_stay_unique_beside_a_per_problem_folder(kernelbench: tuple[Path, Path]):
    problems, run = kernelbench
    copy(SOLUTIONS / "affine_relu" / "correct_torch.py", run / "1_Affine_relu" / "sample_0.py")
    copy(run / "level_1_problem_1_sample_1_kernel.py", run / "level_1_problem_1_sample_01_kernel.py")
    catalog = Catalog(problems, run)
    names = [s.name for s in catalog.registered_solutions(catalog.resolve_problem("1_Affine_relu"))]
    assert names == ["sample_0", "level_1_problem_1_sample_0_kernel", "sample_01", "sample_1"]


def test_a_problem_given_by_path_finds_its_generations(kernelbench: tuple[Path, Path]):
    problems, run = kernelbench
    catalog = Catalog(problems / "level1", run)  # the level folder itself as the problems folder
    problem = catalog.resolve_problem(str(problems / "level1" / "1_Affine_relu.py"))
    assert [s.name for s in catalog.registered_solutions(problem)] == ["sample_0", "sample_1"]
    assert {u.path.name for u in catalog.unmatched_generations()} == {
        "level_1_problem_7_sample_0_kernel.py",
        "level_1_problem_x_sample_0_kernel.py",
        "level_2_problem_1_sample_0_kernel.py",  # level 2 is not in this problems folder
    }
    no_folder = Catalog(problems.parent / "nowhere", run)  # `kbench verify <path>` needs no problems folder
    assert [s.name for s in no_folder.registered_solutions(problem)] == ["sample_0", "sample_1"]


def test_generation_name_is_sample(tmp_path: Path):
    assert Generation(tmp_path / "x.py", KernelBenchId(1, 2), "3").name == "sample_3"


def test_bench_runs_a_kernelbench_run_folder_as_it_is(tmp_path: Path, kernelbench: tuple[Path, Path]):
    problems, run = kernelbench
    only_level1_problem1 = tmp_path / "one" / "KernelBench"  # one problem: every problem's reference would run
    copy(problems / "level1" / "1_Affine_relu.py", only_level1_problem1 / "level1" / "1_Affine_relu.py")
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump(fast_config().model_dump()))
    results = tmp_path / "results"
    args = ["bench", "--all", "--problems-dir", only_level1_problem1, "--solutions-dir", run, "--device", "cpu"]
    outcome = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, [str(a) for a in [*args, "--results-dir", results, "--config", config]]
    )
    assert outcome.exit_code == 1, outcome.output  # one generation is wrong
    (run_dir,) = results.iterdir()
    lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    verdicts = {(r["problem"], r["solution"], r["verdict"]) for r in lines}
    assert verdicts == {("1_Affine_relu", "sample_0", "correct"), ("1_Affine_relu", "sample_1", "incorrect")}
    # The generations no problem of this folder takes are named, not silently left out.
    output = " ".join(outcome.output.split())  # rich may fold a long path
    for stray in ("level_1_problem_7_sample_0_kernel.py", "level_1_problem_x_sample_0_kernel.py"):
        assert f"{stray} is not run" in output, outcome.output
    assert "level_1_problem_1_sample_0_kernel.py is not run" not in output
