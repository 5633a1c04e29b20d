"""CUDA end to end: correct and wrong load_inline solutions, GPU faults, and GPU-only cheats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kbench.cli import app

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
CUDA_FIXTURES = Path(__file__).parent / "fixtures" / "cuda"
CUDA_FUSED = Path(__file__).parents[1] / "kbench" / "solutions" / "example_scale_bias_relu6" / "cuda_fused.py"
SMALL = ["--set", "batch_size=1024"]  # fault tests need no full-size tensor
cli = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def short_run(tmp_path: Path) -> Path:
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump({"timeouts": {"run_s": 45.0}}))
    return config


def verify(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, list[dict]]:
    command = ["verify", "example_scale_bias_relu6", "--device", "cuda", "--json", *map(str, args)]
    result = cli.invoke(app, command, env=env)
    return result.exit_code, [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_cuda_solution_is_correct_faster_and_has_its_own_kernels():
    code, (line,) = verify()
    assert code == 0, line
    assert line["verdict"] == "correct" and line["solution"] == "cuda_fused" and line["device"] == "cuda"
    assert line["overrides"] == {}  # full size on the GPU
    assert line["flags"] == []
    # Three eager passes against one fused pass over a 256 MiB tensor: well over 1.5x on any recent GPU.
    assert line["speedup"] > 1.5, line
    assert any(k["own"] and "scale_bias_relu6" in k["name"] for k in line["kernels"])
    assert 0 < line["floor_ms"] < line["new_ms"]
    assert line["new_error_fp64"] < 4 * max(line["ref_error_fp64"], 1e-6)


def test_wrong_cuda_solution_is_incorrect():
    code, (line,) = verify("-s", CUDA_FIXTURES / "wrong_relu6.py")
    assert code == 1
    assert line["verdict"] == "incorrect" and "outside atol" in line["reason"]


def test_side_stream_work_is_rejected():
    code, (line,) = verify("-s", CUDA_FIXTURES / "side_stream.py", *SMALL)
    assert code == 1
    assert line["verdict"] == "rejected" and "side_stream" in line["flags"], line


def test_pytorch_only_solution_is_flagged_no_custom_kernel():
    code, (line,) = verify("-s", CUDA_FIXTURES / "torch_only.py", *SMALL)
    assert code == 0
    assert line["verdict"] == "correct" and "no_custom_kernel" in line["flags"], line


def test_unwritten_gpu_output_is_incorrect():
    code, (line,) = verify("-s", CUDA_FIXTURES / "unwritten_output.py", *SMALL)
    assert code == 1 and line["verdict"] == "incorrect", line


def test_out_of_memory_is_a_runtime_error():
    code, (line,) = verify("-s", CUDA_FIXTURES / "out_of_memory.py", *SMALL)
    assert code == 1
    assert line["verdict"] == "runtime_error" and "out of memory" in line["reason"].lower(), line


def test_gpu_faults_are_judged_and_the_gpu_stays_usable(short_run: Path):
    faulty = CUDA_FIXTURES / "faulty_kernels.py"
    illegal = CUDA_FIXTURES / "illegal_address.py"
    env = {**os.environ, "KBENCH_FAULT": "assert"}
    code, lines = verify("-s", illegal, "-s", faulty, "-s", CUDA_FUSED, *SMALL, "--config", short_run, env=env)
    assert code == 1
    assert [line["verdict"] for line in lines] == ["runtime_error", "runtime_error", "correct"], lines
    assert "illegal memory access" in lines[0]["reason"]
    assert "assert" in lines[1]["reason"]
    env["KBENCH_FAULT"] = "spin"
    code, lines = verify("-s", faulty, "-s", CUDA_FUSED, *SMALL, "--config", short_run, env=env)
    assert code == 1
    assert [line["verdict"] for line in lines] == ["timeout", "correct"], lines
