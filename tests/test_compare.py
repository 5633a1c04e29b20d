"""`kbench compare`: how far each job's medians moved across runs, and an exit code on a bound."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbench.cli import app
from kbench.results import JobResult, ResultsFile, Verdict
from kbench.spread import relative_spread, spreads

cli = CliRunner(env={"COLUMNS": "200"})


def job(
    new_ms: float, ref_ms: float = 2.0, verdict: Verdict = Verdict.CORRECT, digest: str = "a", state: dict | None = None
) -> JobResult:
    correct = verdict == Verdict.CORRECT
    return JobResult(
        problem="p",
        solution="s",
        device="cuda",
        verdict=verdict,
        reason="",
        new_ms=new_ms,
        ref_ms=ref_ms,
        speedup=ref_ms / new_ms if correct else None,
        new_rse=0.001,
        timing_mode="events",
        solution_digest=digest,
        device_state=state or {},
    )


def write_runs(tmp_path: Path, *jobs: JobResult) -> list[str]:
    names = []
    for index, result in enumerate(jobs):
        name = f"run{index}"
        (tmp_path / name).mkdir()
        ResultsFile(tmp_path / name / "results.jsonl").append(result)
        names.append(name)
    return names


def compare(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = cli.invoke(app, ["compare", *args, "--results-dir", str(tmp_path)])
    return result.exit_code, result.output


def test_spread_is_range_over_median():
    assert relative_spread([1.0, 1.01, 0.99]) == pytest.approx(0.02)
    assert relative_spread([5.0]) == 0.0


def test_runs_within_the_bound_pass(tmp_path: Path):
    names = write_runs(tmp_path, job(1.000), job(1.002), job(0.999))
    code, out = compare(tmp_path, *names, "--csv", str(tmp_path / "spread.csv"))
    assert code == 0, out
    assert "0.30%" in out  # (1.002 - 0.999) / 1.000
    assert "new_spread" in (tmp_path / "spread.csv").read_text()


def test_a_run_that_moved_more_than_the_bound_fails(tmp_path: Path):
    names = write_runs(tmp_path, job(1.00), job(1.02))
    code, out = compare(tmp_path, *names)
    assert code == 1 and "1.98%" in out  # 0.02 over the median, 1.01
    assert compare(tmp_path, *names, "--within", "0.05")[0] == 0


def test_only_correct_timed_jobs_count_and_the_rest_are_named(tmp_path: Path):
    names = write_runs(tmp_path, job(1.0), job(1.0), job(9.0, verdict=Verdict.INCORRECT))
    (found,) = spreads({name: ResultsFile(tmp_path / name / "results.jsonl").read() for name in names})
    assert found.new_ms == [1.0, 1.0] and found.missing == ["run2"]
    code, out = compare(tmp_path, *names)
    assert code == 0 and "not timed in run2" in out


def test_a_changed_solution_is_pointed_out(tmp_path: Path):
    names = write_runs(tmp_path, job(1.0, digest="a"), job(0.9, digest="b"))
    code, out = compare(tmp_path, *names)
    assert code == 1 and "the solution file differs between these runs" in out


def test_each_runs_busy_clock_and_throttling_are_shown_beside_the_medians(tmp_path: Path):
    capped = {"sm_clock_mhz_busy_mean": 1912.4, "throttle": ["power cap"]}
    names = write_runs(
        tmp_path, job(1.0, state={"sm_clock_mhz_busy_mean": 1975.0, "throttle": []}), job(1.0, state=capped)
    )
    code, out = compare(tmp_path, *names, "--csv", str(tmp_path / "spread.csv"))
    assert code == 0 and "1975 / 1912" in out
    assert "NVML saw the GPU slowed (power or thermal) in run1" in out and "in run0" not in out
    (row,) = csv.DictReader((tmp_path / "spread.csv").open())
    assert row["busy_clock_mhz"] == "1975;1912" and row["throttled_in"] == "run1"


def test_runs_without_device_readings_show_no_clock(tmp_path: Path):
    (found,) = spreads({"a": [job(1.0)], "b": [job(1.0)]})
    assert found.busy_clock_mhz == [None, None] and found.throttled_in == []


@pytest.mark.parametrize("args", [["run0"], ["run0", "run0"], ["run0", "nosuchrun"]])
def test_fewer_than_two_runs_or_unknown_runs_are_usage_errors(tmp_path: Path, args: list[str]):
    write_runs(tmp_path, job(1.0))
    assert compare(tmp_path, *args)[0] == 2
