"""The command line end to end: real workers, real run directories, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import PROBLEMS, SOLUTIONS, fast_config
from typer.testing import CliRunner

from kbench.cli import app
from kbench.metadata import source_digest
from kbench.report import COLUMNS

cli = CliRunner(env={"COLUMNS": "200"})  # wide enough that rich never truncates a name


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(fast_config().model_dump()))
    return path


def invoke(*args: str | Path) -> tuple[int, str]:
    result = cli.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_the_console_script_entry_point_runs_the_command_line():
    entry = "import sys; from kbench.launch import main; sys.argv = ['kbench', 'list']; main()"
    done = subprocess.run(
        [sys.executable, "-c", entry], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    )
    assert done.returncode == 0, done.stderr
    assert "example_scale_bias_relu6" in done.stdout


def test_list_shows_problems_and_their_solutions():
    code, out = invoke("list")
    assert code == 0
    assert "example_scale_bias_relu6" in out and "cpp_fused" in out


@pytest.mark.slow
def test_verify_builds_the_cpp_example_once_and_passes(config_file: Path):
    code, out = invoke("verify", "example_scale_bias_relu6", "--device", "cpu", "--config", config_file, "--json")
    assert code == 0, out
    first = json.loads(out.strip().splitlines()[-1])
    assert first["verdict"] == "correct" and first["solution"] == "cpp_fused"
    assert first["overrides"] == {"batch_size": 512, "features": 1024}  # small sizes on the CPU
    assert first["build_s"] is not None and first["speedup"] > 0
    code, out = invoke("verify", "example_scale_bias_relu6", "--device", "cpu", "--config", config_file, "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["build_cache_hit"] is True


def test_verify_json_has_the_contract_fields(config_file: Path):
    code, out = invoke(
        "verify",
        PROBLEMS / "affine_relu.py",
        "-s",
        SOLUTIONS / "affine_relu" / "wrong_values.py",
        "--config",
        config_file,
        "--json",
        "--device",
        "cpu",
    )
    assert code == 1
    line = json.loads(out.strip().splitlines()[-1])
    for key in (
        "problem",
        "solution",
        "verdict",
        "reason",
        "flags",
        "max_abs_error",
        "max_rel_error",
        "ref_ms",
        "new_ms",
        "speedup",
        "device",
    ):
        assert key in line
    assert line["verdict"] == "incorrect" and line["device"] == "cpu"


@pytest.mark.slow
def test_set_reaches_get_inputs(config_file: Path):
    solution = SOLUTIONS / "affine_relu" / "requires_batch16.py"
    base = ["verify", PROBLEMS / "affine_relu.py", "-s", solution, "--config", config_file, "--json", "--device", "cpu"]
    code, out = invoke(*base)
    assert code == 0, out
    code, out = invoke(*base, "--set", "batch_size=5")
    line = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and line["verdict"] == "runtime_error" and "expected batch 16, got 5" in line["reason"]
    assert line["overrides"] == {"batch_size": 5}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "no_such_problem"], "unknown problem 'no_such_problem'"),
        (["verify", "example_scale_bias_relu6", "--set", "batch=2"], "no module-level constant batch"),
        (["verify", "example_scale_bias_relu6", "--set", "oops"], "--set expects NAME=VALUE"),
        (["verify", "example_scale_bias_relu6", "-s", "missing.py"], "solution file not found"),
        (["bench"], "name the problems to run, or pass --all"),
        (["report", "--results-dir", "/nonexistent"], "no runs under"),
    ],
)
def test_bad_input_is_a_clear_usage_error(args: list[str], message: str):
    code, out = invoke(*args)
    assert code == 2
    assert message in " ".join(out.split())


@pytest.mark.slow
def test_lint_warns_about_degenerate_problems_only():
    code, out = invoke("lint", PROBLEMS / "saturated_sigmoid.py", "--device", "cpu")
    assert code == 1 and "a constant answer passes" in " ".join(out.split())
    code, out = invoke("lint", PROBLEMS / "affine_relu.py", "--device", "cpu")
    assert code == 0 and "affine_relu: ok" in out


def test_config_typo_is_a_usage_error_naming_key_and_file(tmp_path: Path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("trails: 3\n")
    code, out = invoke("verify", "example_scale_bias_relu6", "--config", bad)
    assert code == 2 and "unknown key 'trails'" in out and "typo.yaml" in " ".join(out.split())


def test_bench_records_a_run_that_report_and_gate_read(tmp_path: Path, make_catalog, config_file: Path):
    problems_dir, solutions_dir = make_catalog("affine_relu", ["correct_torch", "wrong_values"])
    results_dir = tmp_path / "results"
    catalog_args = ["--problems-dir", problems_dir, "--solutions-dir", solutions_dir, "--device", "cpu"]
    code, out = invoke("bench", "--all", *catalog_args, "--results-dir", results_dir, "--config", config_file)
    assert code == 1, out  # one solution is wrong
    (run_dir,) = results_dir.iterdir()
    lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    verdicts = {(r["solution"], r["verdict"]) for r in lines}
    assert verdicts == {("correct_torch", "correct"), ("wrong_values", "incorrect")}
    # No terminal here, so no progress bar: each job has a line in the log as it starts and as it ends instead.
    logged = [line for line in out.splitlines() if line.startswith("[") and ": started (" not in line]
    assert [line[:20] for line in logged] == ["[1/2] affine_relu / ", "[2/2] affine_relu / "]
    assert sum(": started (" in line for line in out.splitlines()) == 2
    assert any("/ correct_torch: correct, " in line and "speedup" in line for line in logged)
    assert any("/ wrong_values: incorrect" in line and "elements outside atol" in line for line in logged)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["torch"] and meta["device"] == "cpu" and meta["config"]["trials"] == 2 and meta["finished_at"]
    assert meta["device_info"]["device"] == "cpu"
    assert meta["source_digest"] == source_digest()  # names the code that ran, with or without git

    csv = tmp_path / "out.csv"
    code, out = invoke("report", "--results-dir", results_dir, "--csv", csv)
    assert code == 0 and "| affine_relu" in out
    frame = pd.read_csv(csv)
    assert list(frame.columns) == COLUMNS and len(frame) == 2

    gate = tmp_path / "gate.yaml"
    gate.write_text("default_min_speedup: 0.0\n")
    code, out = invoke("gate", run_dir, "--config", gate)
    assert code == 1 and "wrong_values: incorrect" in " ".join(out.split())


@pytest.mark.slow
def test_bench_gate_passes_and_fails_on_speedup(tmp_path: Path, make_catalog, config_file: Path):
    problems_dir, solutions_dir = make_catalog("affine_relu", ["correct_torch"])
    gate = tmp_path / "gate.yaml"
    common = [
        "bench",
        "affine_relu",
        "--device",
        "cpu",
        "--problems-dir",
        problems_dir,
        "--solutions-dir",
        solutions_dir,
        "--results-dir",
        tmp_path / "results",
        "--config",
        config_file,
        "--gate",
        gate,
    ]
    gate.write_text("problems: {affine_relu: {min_speedup: 0.0}}\n")
    code, out = invoke(*common)
    assert code == 0, out
    gate.write_text("problems: {affine_relu: {min_speedup: 1000000.0}}\n")
    code, out = invoke("gate", "--results-dir", tmp_path / "results", "--config", gate)
    assert code == 1 and "below 1e+06x" in out


def _start_a_run_that_hangs_on_its_second_job(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path, Path]:
    """A `kbench bench` process whose first job is correct and whose second hangs, once the first is recorded:
    (the process, its results.jsonl, the hanging solution, its log)."""
    problems_dir, solutions_dir = tmp_path / "problems", tmp_path / "solutions" / "affine_relu"
    problems_dir.mkdir()
    solutions_dir.mkdir(parents=True)
    (problems_dir / "affine_relu.py").write_text((PROBLEMS / "affine_relu.py").read_text())
    (solutions_dir / "a_correct.py").write_text((SOLUTIONS / "affine_relu" / "correct_torch.py").read_text())
    slow = solutions_dir / "b_slow.py"  # hangs while the run is stopped, then is fixed before resuming
    slow.write_text((SOLUTIONS / "affine_relu" / "hang.py").read_text())
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(fast_config(run_s=300.0).model_dump()))
    results_dir = tmp_path / "results"
    log = tmp_path / "bench.log"
    sink = log.open("w")  # the child keeps its own copy of the descriptor
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from kbench.cli import app; app()",
            "bench",
            "--all",
            "--device",
            "cpu",
            "--problems-dir",
            str(problems_dir),
            "--solutions-dir",
            str(solutions_dir.parent),
            "--results-dir",
            str(results_dir),
            "--config",
            str(config),
        ],
        stdout=sink,
        stderr=subprocess.STDOUT,
    )
    sink.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list(results_dir.glob("*/results.jsonl"))
        if found and found[0].read_text().count("\n") >= 1:
            time.sleep(2.0)  # the hanging job is under way now
            return parent, found[0], slow, log
        time.sleep(0.2)
    parent.kill()
    raise AssertionError("the first job never finished")


@pytest.mark.slow
def test_a_killed_run_keeps_every_finished_job_and_resumes(tmp_path: Path):
    parent, results, slow, log = _start_a_run_that_hangs_on_its_second_job(tmp_path)
    results_dir = results.parent.parent
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    lines = results.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["verdict"] == "correct"
    # The log of the killed run says how far it got: the finished job, and the one cut off as started only.
    logged = [line for line in log.read_text().splitlines() if line.startswith("[")]
    finished = [line for line in logged if ": started" not in line]
    assert len(finished) == 1 and finished[0].startswith("[1/2] affine_relu / a_correct: correct, "), logged
    assert any(line.startswith("[2/2] affine_relu / b_slow: started") for line in logged), logged
    assert not any(line.startswith("[2/2] affine_relu / b_slow: ") and ": started" not in line for line in logged)
    time.sleep(1.0)
    leftover = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_mentions(p, str(tmp_path))]
    assert leftover == [], "a worker outlived the killed parent"

    slow.write_text((SOLUTIONS / "affine_relu" / "correct_torch.py").read_text())
    code, out = invoke("bench", "--resume", results.parent.name, "--results-dir", results_dir)
    assert code == 0, out
    assert "1 jobs done, 1 to run" in out
    finished = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["solution"], r["verdict"]) for r in finished] == [("a_correct", "correct"), ("b_slow", "correct")]
    meta = json.loads((results.parent / "metadata.json").read_text())
    assert len(meta["resumed"]) == 1 and meta["config"]["timeouts"]["run_s"] == 300.0
    assert "earlier_throughput" not in meta, "a killed run records no throughput of its own"


@pytest.mark.slow
def test_a_stopped_run_records_its_throughput_so_far_and_resume_keeps_it_beside_its_own(tmp_path: Path):
    """Ctrl-C (or `timeout --signal=INT`) ends a run early: its metadata says how many jobs it finished, in how
    long, marked interrupted; the run that finishes it adds its own figures and keeps those."""
    parent, results, slow, _ = _start_a_run_that_hangs_on_its_second_job(tmp_path)
    parent.send_signal(signal.SIGINT)
    assert parent.wait(timeout=60) == 130
    meta = json.loads((results.parent / "metadata.json").read_text())
    stopped = meta["throughput"]
    assert stopped["interrupted"] is True and stopped["jobs"] == 1 and "finished_at" not in meta
    assert stopped["wall_s"] > 2.0 and stopped["summed_s"]["run"] > 0.0 and stopped["devices"] == ["cpu"]

    slow.write_text((SOLUTIONS / "affine_relu" / "correct_torch.py").read_text())
    code, out = invoke("bench", "--resume", results.parent.name, "--results-dir", results.parent.parent)
    assert code == 0, out
    meta = json.loads((results.parent / "metadata.json").read_text())
    assert meta["earlier_throughput"] == [stopped]
    assert meta["throughput"]["jobs"] == 1 and "interrupted" not in meta["throughput"]


def test_resume_refuses_a_selection_and_unknown_runs(tmp_path: Path):
    code, out = invoke("bench", "--all", "--resume", "x")
    assert code == 2 and "--resume takes no problem selection" in out
    code, out = invoke("bench", "--resume", "nope", "--results-dir", tmp_path)
    assert code == 2 and "no run 'nope'" in out


def _cmdline_mentions(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().decode(errors="replace") and os.getpid() != int(proc.name)
    except OSError:
        return False


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_a_clear_error_and_keeps_finished_results(
    tmp_path: Path, make_catalog, config_file: Path, monkeypatch
):
    import errno

    from kbench.results import ResultsFile

    problems_dir, solutions_dir = make_catalog("affine_relu", ["correct_renamed", "correct_torch"])
    real_append = ResultsFile.append
    written = []

    def append_until_full(self, result):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, result)
        written.append(result)

    monkeypatch.setattr(ResultsFile, "append", append_until_full)
    results_dir = tmp_path / "results"
    code, out = invoke(
        "bench",
        "--all",
        "--device",
        "cpu",
        "--problems-dir",
        problems_dir,
        "--solutions-dir",
        solutions_dir,
        "--results-dir",
        results_dir,
        "--config",
        config_file,
    )
    message = " ".join(out.split())
    assert code == 3 and "No space left on device" in message and "Every result finished before" in message
    (run_dir,) = results_dir.iterdir()
    assert f"kbench bench --resume {run_dir.name}" in message
    kept = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["solution"] for r in kept] == ["correct_renamed"]


@pytest.mark.slow
def test_resume_runs_again_a_job_that_kbench_itself_failed_and_reports_its_new_result(
    tmp_path: Path, make_catalog, config_file: Path
):
    problems_dir, solutions_dir = make_catalog("affine_relu", ["correct_renamed", "correct_torch"])
    results_dir = tmp_path / "results"
    bench = ["--problems-dir", problems_dir, "--solutions-dir", solutions_dir, "--results-dir", results_dir]
    code, out = invoke("bench", "--all", "--device", "cpu", *bench, "--config", config_file)
    assert code == 0, out
    (run_dir,) = results_dir.iterdir()
    results = run_dir / "results.jsonl"
    first, second = (json.loads(line) for line in results.read_text().splitlines())
    # As if kbench's parent had failed the second job: the solution was never judged, so it must run again.
    second.update(verdict="runtime_error", flags=["harness_error"], speedup=None, reason="kbench failed")
    results.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    code, out = invoke("bench", "--resume", run_dir.name, "--results-dir", results_dir)
    assert code == 0, out
    assert "1 jobs done, 1 to run" in out
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["solution"], r["verdict"]) for r in lines] == [
        ("correct_renamed", "correct"),
        ("correct_torch", "runtime_error"),  # the file keeps the failed attempt
        ("correct_torch", "correct"),
    ]
    table = tmp_path / "table.json"
    code, out = invoke("report", "--results-dir", results_dir, "--json", table)
    assert code == 0, out
    rows = json.loads(table.read_text())
    rows = rows["results"] if isinstance(rows, dict) else rows
    assert sorted((r["solution"], r["verdict"]) for r in rows) == [
        ("correct_renamed", "correct"),
        ("correct_torch", "correct"),
    ]
    # A job the solution itself failed is a verdict, and stays one.
    code, out = invoke("bench", "--resume", run_dir.name, "--results-dir", results_dir)
    assert code == 0 and "2 jobs done, 0 to run" in out, out
