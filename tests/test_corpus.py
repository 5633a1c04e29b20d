"""The throughput corpus generator (benchmarks/corpus/generate.py): counts, KernelBench format, determinism,
and the plain-PyTorch solutions judged against their references on the CPU at small sizes."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from kbench.catalog import read_problem, read_solution

GENERATOR = Path(__file__).resolve().parents[1] / "benchmarks" / "corpus" / "generate.py"
FAMILIES = {"elementwise", "reduction", "normalization", "gemm_epilogue", "convolution"}
SOLUTION_NAME = re.compile(r"level_(\d)_problem_(\d+)_sample_(\d+)_kernel\.py")
PROBLEM_NAME = re.compile(r"(\d+)_\w+\.py")


def generate(out: Path, *args: str) -> dict[str, Any]:
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out), *args], check=True, capture_output=True)
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("corpus")
    return out, generate(out)


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_problem(path: Path, name: str) -> ModuleType:
    """The problem module with its size constants set to KBENCH_SMALL_SIZES, as kbench does on the CPU."""
    module = load(path, name)
    for key, value in module.KBENCH_SMALL_SIZES.items():
        setattr(module, key, value)
    return module


def cuda_source(path: Path) -> str:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "cuda_source":
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path}: no cuda_source")


def top_level(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}


def test_counts_and_proportions(corpus: tuple[Path, dict[str, Any]]) -> None:
    _, manifest = corpus
    problems, solutions = manifest["problems"], manifest["solutions"]
    assert len(problems) >= 80 and len(solutions) >= 200
    assert {p["family"] for p in problems} == FAMILIES
    assert {s["family"] for s in solutions} == FAMILIES
    n = len(solutions)
    kinds = Counter(s["kind"] for s in solutions)
    assert 0.65 <= kinds["cuda"] / n <= 0.80
    assert 0.12 <= kinds["pytorch"] / n <= 0.18
    assert 0.08 <= kinds["triton"] / n <= 0.12
    outcomes = Counter(s["outcome"] for s in solutions)
    assert 0.08 <= outcomes["wrong"] / n <= 0.12
    assert 3 <= outcomes["compile_error"] <= 5
    assert outcomes["hang"] == 1
    assert {s["kind"] for s in solutions if s["outcome"] == "wrong"} == {"cuda", "pytorch", "triton"}
    assert {s["kind"] for s in solutions if s["outcome"] in ("compile_error", "hang")} == {"cuda"}
    counts = manifest["counts"]
    assert counts["problems"] == len(problems) and counts["solutions"] == n
    assert counts["solutions_by_kind"] == {k: kinds[k] for k in ("cuda", "pytorch", "triton")}
    assert all(s["expected_verdict"] for s in solutions)


def test_layout(corpus: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = corpus
    listed = {p["file"] for p in manifest["problems"]} | {s["file"] for s in manifest["solutions"]}
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*.py")}
    assert on_disk == listed
    numbers = Counter((p["level"], p["number"]) for p in manifest["problems"])
    assert max(numbers.values()) == 1
    for p in manifest["problems"]:
        path = Path(p["file"])
        assert path.parent == Path(f"problems/level{p['level']}") and PROBLEM_NAME.fullmatch(path.name)
        assert path.name.startswith(f"{p['number']}_")
    stems = {Path(p["file"]).stem for p in manifest["problems"]}
    assert len(stems) == len(manifest["problems"])  # kbench finds a problem by its stem, across levels
    samples: dict[str, list[int]] = {}
    for s in manifest["solutions"]:
        match = SOLUTION_NAME.fullmatch(Path(s["file"]).name)
        assert match and Path(s["file"]).parent == Path("solutions")
        assert (int(match[1]), int(match[2]), int(match[3])) == (s["level"], s["problem_number"], s["sample"])
        assert (root / s["problem"]).is_file()
        samples.setdefault(s["problem"], []).append(s["sample"])
    assert set(samples) == {p["file"] for p in manifest["problems"]}  # every problem has a solution
    assert all(sorted(v) == list(range(len(v))) for v in samples.values())
    assert max(len(v) for v in samples.values()) > 1


def test_problem_files_are_kernelbench_format(corpus: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = corpus
    for p in manifest["problems"]:
        path = root / p["file"]
        assert {"Model", "get_inputs", "get_init_inputs"} <= top_level(path)
        problem = read_problem(path)  # kbench's own reader: size constants, KBENCH_SMALL_SIZES naming them
        assert "batch_size" in problem.constants and problem.small_sizes
        assert problem.constants == {k: tuple(v) if isinstance(v, list) else v for k, v in p["constants"].items()}


def test_one_reference_per_family_runs_on_cpu(corpus: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = corpus
    first = {}
    for p in manifest["problems"]:
        first.setdefault(p["family"], p)
    for family, p in first.items():
        module = small_problem(root / p["file"], f"corpus_ref_{family}")
        torch.manual_seed(0)
        model = module.Model(*module.get_init_inputs())
        out = model(*module.get_inputs())
        assert isinstance(out, torch.Tensor) and out.numel() > 0 and torch.isfinite(out).all(), family


def test_solution_files(corpus: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = corpus
    sources, extensions = [], []
    for s in manifest["solutions"]:
        path = root / s["file"]
        text = path.read_text()
        assert "ModelNew" in top_level(path), s["file"]  # parses as Python, the broken-CUDA ones too
        if s["kind"] == "cuda":
            assert "load_inline(" in text and "cuda_sources=cuda_source" in text
            assert read_solution(path).devices == ("cuda",)
            sources.append(cuda_source(path))
            extensions.append(s["extension"])
        elif s["kind"] == "triton":
            assert "import triton" in text and "@triton.jit" in text and "load_inline" not in text
        else:
            assert "load_inline" not in text and "triton" not in text
    assert len(set(sources)) == len(sources), "every CUDA source is its own (no build-cache hits between them)"
    assert len(set(extensions)) == len(extensions)


def test_broken_and_hanging_solutions(corpus: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = corpus
    broken = re.compile(r"kBlockSize|[^>]>>\(|float4|constexpr int kBlock = \d+\n")
    for s in manifest["solutions"]:
        if s["kind"] != "cuda":
            continue
        source = cuda_source(root / s["file"])
        assert bool(broken.search(source)) == (s["outcome"] == "compile_error"), s["file"]
        assert ("atomicAdd(arrived" in source) == (s["outcome"] == "hang"), s["file"]
    details = {s["detail"] for s in manifest["solutions"] if s["outcome"] == "compile_error"}
    assert len(details) == len([s for s in manifest["solutions"] if s["outcome"] == "compile_error"])


def test_plain_pytorch_solutions_match_or_not_as_intended(corpus: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = corpus
    plain = [s for s in manifest["solutions"] if s["kind"] == "pytorch"]
    assert {s["outcome"] for s in plain} == {"correct", "wrong"}
    for i, s in enumerate(plain):
        problem = small_problem(root / s["problem"], f"corpus_problem_{i}")
        solution = load(root / s["file"], f"corpus_solution_{i}")
        torch.manual_seed(0)
        model = problem.Model(*problem.get_init_inputs())
        torch.manual_seed(0)
        new = solution.ModelNew(*problem.get_init_inputs())
        assert [n for n, _ in model.named_parameters()] == [n for n, _ in new.named_parameters()]
        torch.manual_seed(1)
        inputs = problem.get_inputs()
        with torch.no_grad():
            expected, got = model(*inputs), new(*inputs)
        if s["outcome"] == "correct":
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=s["file"])
        else:
            assert got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-3, rtol=1e-3), s["file"]


def test_same_seed_same_bytes(corpus: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, _ = corpus
    generate(tmp_path / "again")
    generate(tmp_path / "other", "--seed", "1")

    def snapshot(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert snapshot(tmp_path / "again") == snapshot(root)
    assert snapshot(tmp_path / "other") != snapshot(root)


def test_other_sizes_and_bad_arguments(tmp_path: Path) -> None:
    manifest = generate(tmp_path / "small", "--problems", "10", "--solutions", "30", "--seed", "3")
    assert manifest["counts"]["problems"] == 10 and manifest["counts"]["solutions"] == 30
    assert {p["family"] for p in manifest["problems"]} == FAMILIES
    assert manifest["counts"]["solutions_by_outcome"]["hang"] == 1
    failed = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path / "bad"), "--problems", "80", "--solutions", "50"],
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "--solutions" in failed.stderr
