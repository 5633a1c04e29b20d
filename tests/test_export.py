"""Exports (kbench.export) and the machine-readable options: HTML report, JUnit XML, --json on the commands.

Results are built by hand or written to a run directory in tmp_path: no solution runs here, except in the one
slow test that runs `bench` and `lint` end to end.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import PROBLEMS, fast_config
from typer.testing import CliRunner

from kbench.export import EXPORTERS, ExportContext, Exporter, UnknownFormat, get_exporter, html_charts
from kbench.export.summary import fast_p, fast_p_curve, geomean_speedup, verdict_counts
from kbench.gate import GateCheck
from kbench.report import COLUMNS
from kbench.results import JobResult, ResultsFile, Verdict
from kbench.runs import RunDir

cli = CliRunner(env={"COLUMNS": "200"})
METADATA = {
    "device": "cuda",
    "host": "ci-box",
    "torch": "2.13.0",
    "git": {"commit": "0123456789abcdef0123", "dirty": False},
    "started_at": "2026-11-21T17:00:02+00:00",
    "finished_at": "2026-11-21T17:02:57+00:00",
    "gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver": "580.159.04"}],
}


def job(problem: str, solution: str, verdict: Verdict = Verdict.CORRECT, speedup: float | None = None, **fields):
    """A finished job; a correct one with a speedup gets an interval around it and plausible medians."""
    values: dict = {"reason": "5 trials within tolerance" if verdict == Verdict.CORRECT else "it failed"}
    if speedup is not None:
        values |= {"speedup": speedup, "speedup_low": speedup * 0.98, "speedup_high": speedup * 1.03}
        values |= {"ref_ms": 2.0, "new_ms": 2.0 / speedup}
    return JobResult(problem, solution, verdict, device="cuda", wall_s=3.25, **(values | fields))


def mixed_results() -> list[JobResult]:
    return [
        job("p1", "fast", speedup=4.123456789012345, roofline_fraction=0.75, flags=["static_precision"]),
        job("p1", "slow", speedup=0.5),
        job("p2", "wrong", Verdict.INCORRECT, reason="3 of 16 elements outside atol", flags=["precision_loss"]),
        job("p3", "broken", Verdict.COMPILE_ERROR, reason="load_inline failed", detail="error: \x1b[31mno\x1b[0m\n"),
    ]


def write_run(root: Path, name: str, results: Sequence[JobResult], metadata: dict | None = None) -> RunDir:
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    for result in results:
        ResultsFile(run.path / "results.jsonl").append(result)
    run.results.path.touch()
    run.write_metadata(METADATA if metadata is None else metadata)
    return run


def context(checks: list[GateCheck] | None = None) -> ExportContext:
    return ExportContext("20261121-170002-787a", METADATA, checks)


# --- registry -------------------------------------------------------------------------------------------


def test_the_registry_has_all_five_formats_behind_one_interface():
    assert set(EXPORTERS) >= {"csv", "json", "markdown", "html", "junit"}
    for name in EXPORTERS:
        exporter = get_exporter(name)
        assert isinstance(exporter, Exporter) and exporter.name == name and exporter.suffix.startswith(".")
        assert isinstance(exporter.render(mixed_results(), context()), str | bytes)


class TsvExporter(Exporter):
    name = "tsv"
    suffix = ".tsv"

    def render(self, results: Sequence[JobResult], context: ExportContext) -> str:
        return "".join(f"{r.problem}\t{r.solution}\t{r.verdict}\n" for r in results)


def test_adding_a_format_is_one_registry_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(EXPORTERS, "tsv", f"{__name__}:TsvExporter")
    target = tmp_path / "out.tsv"
    get_exporter("tsv").write(mixed_results()[:1], context(), target)
    assert target.read_text() == "p1\tfast\tcorrect\n"
    with pytest.raises(UnknownFormat, match="no export format 'xlsx'"):
        get_exporter("xlsx")


# --- run summary ----------------------------------------------------------------------------------------


def test_fast_p_counts_correct_jobs_faster_than_p_over_all_jobs():
    results = mixed_results()
    assert fast_p(results, 0.0) == 0.5  # two of four correct
    assert fast_p(results, 1.0) == 0.25  # only one of them beats eager
    assert fast_p(results, 4.123456789012345) == 0.0  # strictly faster than p
    ps, shares = fast_p_curve(results)
    assert ps == [0.0, 0.5, 4.123456789012345] and shares == [0.5, 0.25, 0.0]
    assert geomean_speedup(results) == pytest.approx(math.sqrt(4.123456789012345 * 0.5))
    assert verdict_counts(results) == {"correct": 2, "incorrect": 1, "compile_error": 1}


def test_a_run_without_correct_jobs_has_no_geomean_and_a_flat_fast_p():
    results = [job("p", "s", Verdict.TIMEOUT)]
    assert geomean_speedup(results) is None
    assert fast_p_curve(results) == ([0.0], [0.0])
    assert fast_p_curve([]) == ([0.0], [0.0]) and fast_p([], 1.0) == 0.0


# --- CSV, JSON, Markdown --------------------------------------------------------------------------------


def test_json_keeps_lists_and_full_precision_and_csv_keeps_the_columns():
    records = json.loads(get_exporter("json").render(mixed_results(), context()))
    assert [r["solution"] for r in records] == ["fast", "slow", "wrong", "broken"]
    assert list(records[0]) == COLUMNS
    assert records[0]["flags"] == ["static_precision"] and records[1]["flags"] == []
    assert records[0]["speedup"] == 4.123456789012345  # no rounding on the way
    assert records[0]["overrides"] == {} and records[0]["gpu_throttle"] == []
    csv_text = get_exporter("csv").render(mixed_results(), context())
    assert csv_text.splitlines()[0].split(",") == COLUMNS and "static_precision" in csv_text
    markdown = get_exporter("markdown").render(mixed_results(), context())
    assert markdown.startswith("| problem") and "| compile_error" in markdown


# --- HTML -----------------------------------------------------------------------------------------------


class PageStructure(HTMLParser):
    """Element ids, every <script>'s attributes, and text: enough to check a page's structure."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "script":
            self.scripts.append(found)


def parse_page(page: str) -> tuple[PageStructure, dict]:
    structure = PageStructure()
    structure.feed(page)
    data = re.search(r'<script type="application/json" id="kbench-data">(.*?)</script>', page, re.S)
    assert data is not None
    return structure, json.loads(data.group(1))


def test_the_html_report_is_self_contained_with_summary_speedups_and_fast_p():
    page = get_exporter("html").render(mixed_results(), context())
    structure, data = parse_page(page)
    assert not [s for s in structure.scripts if s.get("src")]  # nothing loaded from anywhere: opens offline
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=.http", page)
    assert page.count("* plotly.js v") == 1  # the library inlined once, shared by every chart
    assert {"run", "verdicts", "numbers", "jobs", "speedup-chart", "fast-p-chart", "roofline-chart"} <= structure.ids
    for fact in ("20261121-170002-787a", "NVIDIA H100 80GB HBM3", "0123456789ab", "2026-11-21T17:00:02"):
        assert fact in page
    assert data["summary"]["verdicts"] == {"correct": 2, "incorrect": 1, "compile_error": 1}
    assert data["summary"]["geomean_speedup"] == pytest.approx(math.sqrt(4.123456789012345 * 0.5))
    assert data["fast_p"] == {"p": [0.0, 0.5, 4.123456789012345], "share": [0.5, 0.25, 0.0]}
    assert [j["speedup"] for j in data["jobs"]] == [4.123456789012345, 0.5, None, None]
    assert page.count("Plotly.newPlot(") == 3  # each chart is drawn by the inlined library


def test_the_charts_hold_each_jobs_speedup_interval_fast_p_and_roofline():
    results = mixed_results()
    (speedups,) = html_charts.speedup_figure(results).data
    assert list(speedups.y) == ["p1 / slow", "p1 / fast"]  # correct jobs only, slowest first (bottom)
    assert list(speedups.x) == [0.5, 4.123456789012345]
    assert list(speedups.error_x.array) == pytest.approx([0.5 * 0.03, 4.123456789012345 * 0.03])
    assert list(speedups.error_x.arrayminus) == pytest.approx([0.5 * 0.02, 4.123456789012345 * 0.02])
    (curve,) = html_charts.fast_p_figure(results).data
    assert (list(curve.x), list(curve.y), curve.line.shape) == ([0.0, 0.5, 4.123456789012345], [0.5, 0.25, 0.0], "hv")
    (roofline,) = html_charts.roofline_figure(results).data
    assert list(roofline.y) == ["p1 / fast"] and list(roofline.x) == [0.75]
    assert html_charts.speedup_figure([job("p", "s", Verdict.CRASH)]) is None


def test_the_html_report_explains_charts_it_cannot_draw():
    page = get_exporter("html").render([job("p", "s", Verdict.CRASH), job("q", "t", Verdict.TIMEOUT)], context())
    structure, data = parse_page(page)
    assert {"speedup-chart-missing", "roofline-chart-missing", "fast-p-chart"} <= structure.ids
    assert data["summary"]["geomean_speedup"] is None and data["fast_p"]["share"] == [0.0]
    single = get_exporter("html").render([job("p", "s", speedup=2.0)], context())
    assert {"speedup-chart", "fast-p-chart"} <= parse_page(single)[0].ids
    empty = get_exporter("html").render([], ExportContext())
    assert "no-jobs" in parse_page(empty)[0].ids and "plotly.js v" not in empty


def test_names_in_the_html_report_are_escaped():
    page = get_exporter("html").render([job("p</script><b>", "s", speedup=2.0)], context())
    assert "<b>" not in page.split('id="kbench-data">')[0].split("<h2>Jobs</h2>")[1]
    _, data = parse_page(page)  # the embedded data still parses, with the name intact
    assert data["jobs"][0]["problem"] == "p</script><b>"


# --- JUnit ----------------------------------------------------------------------------------------------


def test_junit_has_a_testcase_per_job_with_failures_and_errors():
    root = ET.fromstring(get_exporter("junit").render(mixed_results(), context()))
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("p1", "fast"),
        ("p1", "slow"),
        ("p2", "wrong"),
        ("p3", "broken"),
    ]
    assert all(c.get("time") == "3.250" for c in cases)
    assert cases[0].find("failure") is None and cases[0].find("error") is None
    failure = cases[2].find("failure")
    assert failure is not None and failure.get("message") == "incorrect: 3 of 16 elements outside atol"
    assert failure.get("type") == "incorrect" and "precision_loss" in (failure.text or "")
    error = cases[3].find("error")  # it never produced an answer to judge: an error, not a failure
    assert error is not None and error.get("message") == "compile_error: load_inline failed"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "1")
    assert root.get("tests") == "4" and suite.get("hostname") == "ci-box"


def test_junit_carries_gate_checks_and_failed_references():
    checks = [GateCheck("p1", True, "speedup 4.12x >= 1x", 1.0, 4.12, "fast"), GateCheck("p2", False, "bad", 1.0)]
    both = ExportContext("run", METADATA, checks, {"p9": "reference raised"})
    root = ET.fromstring(get_exporter("junit").render(mixed_results(), both))
    jobs, gate = root.findall("testsuite")
    assert [c.get("name") for c in jobs.findall("testcase")][-1] == "reference"
    assert jobs.get("errors") == "2"
    assert [(c.get("classname"), c.get("name")) for c in gate.findall("testcase")] == [("gate", "p1"), ("gate", "p2")]
    assert gate.get("failures") == "1" and gate.find("testcase/failure").get("message") == "bad"
    gate_only = ET.fromstring(get_exporter("junit").render([], context(checks)))
    assert [s.get("name") for s in gate_only.findall("testsuite")] == ["kbench gate 20261121-170002-787a"]


# --- the command line -----------------------------------------------------------------------------------


def invoke(*args: str | Path) -> tuple[int, str]:
    from kbench.cli import app  # here, not at the top: the exporter tests need no command line

    result = cli.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout


def test_report_writes_html_json_and_csv(tmp_path: Path):
    write_run(tmp_path, "20261121-170002-787a", mixed_results())
    html, records, table = tmp_path / "r.html", tmp_path / "r.json", tmp_path / "r.csv"
    code, out = invoke("report", "--results-dir", tmp_path, "--html", html, "--json", records, "--csv", table)
    assert code == 0 and "| p1" in out
    structure, data = parse_page(html.read_text())
    assert "speedup-chart" in structure.ids and data["run_id"] == "20261121-170002-787a"
    assert json.loads(records.read_text())[0]["flags"] == ["static_precision"]
    assert table.read_text().startswith("problem,solution,")


def test_gate_prints_json_and_writes_junit(tmp_path: Path):
    write_run(tmp_path, "run", mixed_results())
    gate, xml = tmp_path / "gate.yaml", tmp_path / "gate.xml"
    gate.write_text("default_min_speedup: 1.0\n")
    code, out = invoke("gate", "--results-dir", tmp_path, "--config", gate, "--json", "--junit", xml)
    document = json.loads(out)
    assert code == 1 and document["passed"] is False
    assert {c["problem"]: c["passed"] for c in document["checks"]} == {"p1": True, "p2": False, "p3": False}
    root = ET.fromstring(xml.read_text())
    assert len(root.findall("testsuite/testcase")) == 3 and root.get("failures") == "2"


def test_compare_and_list_print_json(tmp_path: Path):
    write_run(tmp_path, "a", [job("p", "s", speedup=2.0)])
    write_run(tmp_path, "b", [job("p", "s", speedup=2.0, new_ms=1.002)])
    code, out = invoke("compare", "a", "b", "--results-dir", tmp_path, "--json")
    document = json.loads(out)
    assert code == 0 and document["passed"] is True and document["within"] == 0.005
    (spread,) = document["spreads"]
    assert spread["problem"] == "p" and spread["new_ms"] == [1.0, 1.002] and spread["within"] is True
    code, out = invoke("list", "--problems-dir", PROBLEMS, "--json")
    problems = {entry["problem"]: entry for entry in json.loads(out)}
    assert code == 0 and "affine_relu" in problems and isinstance(problems["affine_relu"]["solutions"], list)


def test_every_new_option_is_in_the_help():
    for command, options in {
        "report": ["--html", "--json", "--csv"],
        "bench": ["--junit", "--json"],
        "gate": ["--junit", "--json"],
        "compare": ["--json"],
        "lint": ["--json"],
        "list": ["--json"],
    }.items():
        code, out = invoke(command, "--help")
        assert code == 0 and all(option in out for option in options), (command, out)


@pytest.mark.slow
def test_bench_and_lint_print_json_and_bench_writes_junit(tmp_path: Path, make_catalog):
    import yaml

    problems_dir, solutions_dir = make_catalog("affine_relu", ["correct_torch", "wrong_values"])
    config, gate, xml = tmp_path / "fast.yaml", tmp_path / "gate.yaml", tmp_path / "bench.xml"
    config.write_text(yaml.safe_dump(fast_config().model_dump()))
    gate.write_text("default_min_speedup: 0.0\n")
    catalog = ["--problems-dir", problems_dir, "--solutions-dir", solutions_dir, "--device", "cpu"]
    common = [*catalog, "--config", config, "--results-dir", tmp_path / "results"]
    code, out = invoke("bench", "--all", *common, "--json", "--junit", xml, "--gate", gate)
    document = json.loads(out)  # stdout holds the document alone: progress went to stderr
    assert code == 1
    assert {(r["solution"], r["verdict"]) for r in document["results"]} == {
        ("correct_torch", "correct"),
        ("wrong_values", "incorrect"),
    }
    assert document["summary"]["jobs"] == 2 and document["gate"]["passed"] is False
    root = ET.fromstring(xml.read_text())
    jobs, gate_suite = root.findall("testsuite")
    assert len(jobs.findall("testcase")) == 2 and jobs.get("failures") == "1" and len(gate_suite) >= 1
    code, out = invoke("lint", "affine_relu", "--problems-dir", problems_dir, "--device", "cpu", "--json")
    (check,) = json.loads(out)
    assert check["problem"] == "affine_relu" and check["ok"] is (code == 0)
