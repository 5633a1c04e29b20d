"""CUDA end to end: a correct load_inline CUDA solution, a wrong one, and one that faults the GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kbench.cli import app

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
CUDA_FIXTURES = Path(__file__).parent / "fixtures" / "cuda"
cli = CliRunner(env={"COLUMNS": "200"})


def verify(*args: str | Path) -> tuple[int, list[dict]]:
    result = cli.invoke(app, ["verify", "example_scale_bias_relu6", "--device", "cuda", "--json", *map(str, args)])
    return result.exit_code, [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_cuda_solution_is_correct_and_faster_than_eager():
    code, (line,) = verify()
    assert code == 0, line
    assert line["verdict"] == "correct" and line["solution"] == "cuda_fused" and line["device"] == "cuda"
    assert line["overrides"] == {}  # full size on the GPU
    # Three eager passes against one fused pass over a 256 MiB tensor: well over 1.5x on any recent GPU.
    assert line["speedup"] > 1.5, line


def test_wrong_cuda_solution_is_incorrect():
    code, (line,) = verify("-s", CUDA_FIXTURES / "wrong_relu6.py")
    assert code == 1
    assert line["verdict"] == "incorrect" and "outside atol" in line["reason"]


def test_illegal_memory_access_is_a_runtime_error_and_the_next_job_passes(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"timeouts": {"run_s": 120.0}}))
    code, lines = verify(
        "-s",
        CUDA_FIXTURES / "illegal_address.py",
        "-s",
        Path(__file__).parents[1] / "kbench/solutions/example_scale_bias_relu6/cuda_fused.py",
        "--config",
        config,
    )
    assert code == 1
    bad, good = lines
    assert bad["verdict"] == "runtime_error" and "illegal memory access" in bad["reason"], bad
    assert good["verdict"] == "correct"
