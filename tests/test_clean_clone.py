"""Issue #19, a fresh clone: `gate` and `report` name the run, machine and commit they judge; the gate file and
the results folder are found, or the error says where kbench looked and what to pass; tests keep their own cache.

Runs are written by hand into tmp_path: no worker runs here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import USER_CACHE_DIR
from typer.testing import CliRunner

from kbench.cli import app
from kbench.config import ConfigError
from kbench.gate import project_root, resolve_gate_file
from kbench.results import JobResult, ResultsFile, Verdict
from kbench.runs import RunDir, describe_run

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "20261121-170002-787a"
GPU_RUN = {
    "device": "cuda",
    "host": "ci-box",
    "cpu": "Intel(R) Xeon(R) Processor",
    "git": {"commit": "0123456789abcdef0123", "dirty": False},
    "started_at": "2026-11-21T17:00:02+00:00",
    "finished_at": "2026-11-21T17:02:57+00:00",
    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver": "580.159.04"}],
}
CPU_RUN = {
    "device": "cpu",
    "host": "laptop",
    "cpu": "AMD EPYC 7B13",
    "git": {"commit": "fedcba9876543210fedc", "dirty": True},
    "started_at": "2026-11-22T08:00:00+00:00",
    "finished_at": "2026-11-22T08:01:30+00:00",
    "gpus": [],
}

# stdout and stderr apart (click >= 8.2 keeps both; `output` has them interleaved)
cli = CliRunner(env={"COLUMNS": "200"})


def flat(text: str) -> str:
    """Rich folds long error lines, inside a long path too where the console is narrow: compare without
    whitespace."""
    return "".join(str(text).split())


def write_run(root: Path, name: str = RUN_ID, metadata: dict | None = None, correct: bool = True) -> RunDir:
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    verdict = Verdict.CORRECT if correct else Verdict.INCORRECT
    result = JobResult("example_scale_bias_relu6", "cpp_fused", verdict, reason="2 trials", device="cpu", speedup=2.0)
    ResultsFile(run.path / "results.jsonl").append(result)
    if metadata is not None:
        run.write_metadata(metadata)
    return run


# --- the header: which run, machine and commit ---------------------------------------------------------------


def test_the_header_names_the_run_when_it_finished_the_gpu_and_the_commit():
    line = describe_run(RUN_ID, GPU_RUN)
    assert line == (
        f"run {RUN_ID}, finished 2026-11-21T17:02:57+00:00, GPU NVIDIA H100 80GB HBM3 on ci-box, "
        "kbench 0123456789ab (clean)"
    )


def test_the_header_names_the_cpu_where_no_gpu_ran_and_says_the_tree_was_dirty():
    line = describe_run("r1", CPU_RUN)
    assert "CPU AMD EPYC 7B13 on laptop" in line and "kbench fedcba987654 (dirty)" in line
    assert "GPU" not in line


def test_the_header_says_what_an_old_or_killed_run_does_not_record():
    assert describe_run("r2", {}) == "run r2, finish time unknown, machine unknown, kbench commit unknown"
    killed = describe_run("r3", {"started_at": "2026-11-22T08:00:00+00:00", "git": {"commit": None, "dirty": None}})
    assert "started 2026-11-22T08:00:00+00:00, not finished" in killed and "kbench commit unknown" in killed
    digest_only = describe_run("r4", {"source_digest": "abcdef0123456789abcdef"})
    assert "source digest abcdef012345" in digest_only


def test_report_prints_the_header_before_the_table(tmp_path: Path):
    write_run(tmp_path / "results", metadata=CPU_RUN)
    result = cli.invoke(app, ["report", "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == describe_run(RUN_ID, CPU_RUN)
    assert lines[2].startswith("| problem")  # then the Markdown table


def test_gate_prints_the_header_before_its_verdict(tmp_path: Path):
    write_run(tmp_path / "results", metadata=GPU_RUN)
    args = ["gate", "--results-dir", str(tmp_path / "results"), "--config", str(REPO / "configs/ci.yaml")]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == describe_run(RUN_ID, GPU_RUN)
    assert "pass" in result.stdout  # then the verdict table (names may fold where rich's console is narrow)


def test_gate_json_keeps_stdout_one_document_and_puts_the_header_on_stderr(tmp_path: Path):
    write_run(tmp_path / "results", metadata=GPU_RUN, correct=False)
    args = ["gate", "--results-dir", str(tmp_path / "results"), "--config", str(REPO / "configs/ci.yaml"), "--json"]
    result = cli.invoke(app, args)
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)  # nothing but the JSON document
    assert document is not None
    assert describe_run(RUN_ID, GPU_RUN) in result.stderr


# --- the gate file: from the current folder, else from kbench's project ---------------------------------------


def test_this_checkout_is_kbench_s_project_root_and_an_install_without_one_has_none(tmp_path: Path):
    assert project_root() == REPO
    (tmp_path / "kbench").mkdir()
    assert project_root(tmp_path / "kbench") is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert project_root(tmp_path / "kbench") is None


def test_a_relative_gate_file_missing_here_is_taken_from_the_project(tmp_path: Path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "ci.yaml").write_text("default_min_speedup: 0.0\n")
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_gate_file(Path("configs/ci.yaml"), project) == project / "configs" / "ci.yaml"
    (elsewhere / "configs").mkdir()
    (elsewhere / "configs" / "ci.yaml").write_text("default_min_speedup: 2.0\n")
    assert resolve_gate_file(Path("configs/ci.yaml"), project) == Path("configs/ci.yaml")  # the current folder wins


def test_gate_with_its_default_config_works_from_any_folder(tmp_path: Path, monkeypatch):
    write_run(tmp_path / "results", metadata=GPU_RUN)
    monkeypatch.chdir(tmp_path)  # no configs/ here: the checkout's configs/ci.yaml is used
    result = cli.invoke(app, ["gate"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"run {RUN_ID}, ") and "pass" in result.stdout


def test_a_gate_file_found_nowhere_is_an_error_that_names_both_paths_and_what_to_pass(tmp_path: Path, monkeypatch):
    write_run(tmp_path / "results", metadata=GPU_RUN)
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, ["gate", "--config", "configs/nope.yaml"])
    assert result.exit_code == 2
    message = flat(result.stderr)
    assert flat(str(tmp_path / "configs" / "nope.yaml")) in message  # from here
    assert flat(str(REPO / "configs" / "nope.yaml")) in message  # and from kbench's project
    assert flat("pass --config") in message and flat(str(REPO / "configs" / "ci.yaml")) in message
    with pytest.raises(ConfigError, match="looked for") as raised:
        resolve_gate_file(tmp_path / "absent.yaml", REPO)
    assert str(REPO / "absent.yaml") not in str(raised.value)  # an absolute path is looked for only where it points


# --- the results folder ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["gate", "report"])
def test_a_missing_results_folder_says_where_kbench_looked_and_what_to_do(tmp_path: Path, monkeypatch, command: str):
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, [command])
    assert result.exit_code == 2
    message = flat(result.stderr)
    assert flat(f"no runs under {tmp_path / 'results'}/ (no such folder)") in message
    assert flat("--results-dir") in message and flat("kbench bench") in message


@pytest.mark.parametrize("command", ["gate", "report"])
def test_an_empty_results_folder_says_so(tmp_path: Path, command: str):
    (tmp_path / "empty").mkdir()
    result = cli.invoke(app, [command, "--results-dir", str(tmp_path / "empty")])
    assert result.exit_code == 2
    message = flat(result.stderr)
    assert flat(f"no runs under {tmp_path / 'empty'}/ (the folder holds no run)") in message
    assert flat("--results-dir") in message and flat("kbench bench") in message


# --- tests keep their own cache ----------------------------------------------------------------------------------


def test_this_session_s_kbench_cache_is_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory):
    from kbench.caches import default_cache_root

    if USER_CACHE_DIR:  # the user chose a cache for this session: it is used as given
        assert os.environ["KBENCH_CACHE_DIR"] == USER_CACHE_DIR
        return
    root = default_cache_root()
    assert root == Path(os.environ["KBENCH_CACHE_DIR"])
    assert root.is_relative_to(tmp_path_factory.getbasetemp())
    assert not root.is_relative_to(Path.home() / ".cache")
