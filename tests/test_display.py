"""Terminal output (kbench.display): figures are never cut, at any width and where output is not a terminal; the
list table shows no markup; warnings about the timing of jobs are said once per run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from kbench import display
from kbench.catalog import Problem, Solution
from kbench.gate import GateCheck
from kbench.results import SPEED_CHANGED, JobResult, Verdict

LONG_PROBLEM = "64_Gemm_LogSumExp_LeakyReLU_LeakyReLU_GELU_GELU"


def _results() -> list[JobResult]:
    return [
        JobResult(
            LONG_PROBLEM,
            "cuda_bf16x3_with_a_long_name",
            Verdict.CORRECT,
            "",
            "cuda",
            flags=["precision_loss"],
            max_abs_error=1.234e-5,
            max_rel_error=3.2e-6,
            ref_ms=8.5601,
            new_ms=2.2871,
            speedup=3.7431,
            speedup_low=3.7212,
            speedup_high=3.7534,
            speedup_vs_compile=3.6512,
            build_s=41.23,
        ),
        JobResult(
            "33_Gemm_Scale_BatchNorm",
            "cuda_bf16x3",
            Verdict.CORRECT,
            "",
            "cuda",
            max_abs_error=2.5e-7,
            max_rel_error=1.75e-9,
            ref_ms=0.012345,
            new_ms=12345.6,
            speedup=1.0e-6,
            speedup_low=9.87e-7,
            speedup_high=1.01e-6,
            speedup_vs_compile=0.00123,
            build_s=0.04,
        ),
        JobResult("example_scale_bias_relu6", "cpp_fused", Verdict.COMPILE_ERROR, "build failed", "cpu", build_s=3.3),
    ]


def _figures(results: list[JobResult]) -> dict[str, list[str]]:
    """Each number column's formatted figures, as the table formats them."""
    return {header: [cell(r) for r in results if cell(r) != "—"] for header, cell, _ in display.NUMBER_COLUMNS}


def _render(renderable: object, width: int, terminal: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=terminal, color_system=None, legacy_windows=False)
    console.print(renderable)
    text = out.getvalue()
    assert all(len(line) <= width for line in text.splitlines()), text
    return text


def _no_terminal_default() -> str:
    """As a CI log gets it: a console on a file, told nothing about the width (rich then assumes 80)."""
    out = io.StringIO()
    Console(file=out, color_system=None).print(display.results_table(_results(), title="kbench bench (cuda)"))
    return out.getvalue()


def test_figures_look_as_expected() -> None:
    figures = _figures(_results())
    assert figures["speedup"] == ["3.74x [3.72–3.75]", "1e-06x [9.87e-07–1.01e-06]"]
    assert figures["new ms"] == ["2.287", "1.235e+04"]
    assert figures["max abs err"] == ["1.23e-05", "2.50e-07"]


@pytest.mark.parametrize("width", [80, 100, 130, 200])
def test_results_table_in_a_terminal_keeps_every_shown_figure_whole(width: int) -> None:
    results = _results()
    text = _render(display.results_table(results, title="kbench bench (cuda)"), width, terminal=True)
    assert "…" not in text
    for verdict in ("correct", "compile_error", "precision_loss"):
        assert verdict in text
    hidden = set()
    if "not shown at" in text:
        hidden = {h for h in display.NUMBER_DROP_ORDER if h in text.split("not shown at", 1)[1]}
    for header, figures in _figures(results).items():
        if header in hidden:
            continue
        for figure in figures:
            assert figure in text, f"{figure!r} ({header}) not whole at {width} columns:\n{text}"
    # The figures that matter most are always there; at 200 columns, everything is.
    assert {"new ms", "speedup"}.isdisjoint(hidden)
    if width >= 200:
        assert not hidden and "┃┃" not in text


def test_results_table_at_80_columns_hides_whole_columns_and_says_which() -> None:
    results = [_results()[0], _results()[2]]  # figures of a usual width: the table, less some columns, fits
    text = _render(display.results_table(results, title="t"), 80, terminal=True)
    assert "┏" in text and "not shown at 80 columns:" in text
    assert "build s" in text.split("not shown at", 1)[1]
    for figure in ("2.287", "3.74x [3.72–3.75]", "compile_error", "precision_loss"):
        assert figure in text


@pytest.mark.parametrize("width", [40, 80, 130])
def test_results_without_a_terminal_show_every_figure_whole(width: int) -> None:
    """A file or a CI log: nothing may be left out there, and nothing cut."""
    results = _results()
    text = _render(display.results_table(results, title="kbench bench (cuda)"), width, terminal=False)
    assert "…" not in text and "┃┃" not in text and "not shown" not in text
    for figures in _figures(results).values():
        for figure in figures:
            assert figure in text, f"{figure!r} not whole in a {width}-column file:\n{text}"
    assert LONG_PROBLEM in text.replace("\n", "") or all(part in text for part in ("64_Gemm", "GELU_GELU"))


def test_results_in_a_log_with_rich_default_width() -> None:
    text = _no_terminal_default()
    assert "…" not in text and "┃┃" not in text
    for figures in _figures(_results()).values():
        for figure in figures:
            assert figure in text
    assert f"{LONG_PROBLEM} / cuda_bf16x3_with_a_long_name:" in text and "correct (precision_loss)" in text


def test_results_in_a_very_narrow_terminal_are_stacked_whole() -> None:
    results = _results()
    text = _render(display.results_table(results, title="t"), 40, terminal=True)
    assert "…" not in text
    for figures in _figures(results).values():
        for figure in figures:
            assert figure in text


def test_a_wide_table_has_every_column() -> None:
    text = _render(display.results_table(_results(), title="t"), 250, terminal=False)
    for header in ("problem", "solution", "verdict", "speedup", "compile", "build"):
        assert header in text
    assert LONG_PROBLEM in text and "┏" in text


def _catalog() -> list[tuple[Problem, list[Solution]]]:
    return [
        (
            Problem(LONG_PROBLEM, Path("p.py"), small_sizes={"batch_size": 512, "in_features": 1024}),
            [Solution("cuda_bf16x3", Path("s.py"), ("cuda",)), Solution("cpp_fused_gemm", Path("c.py"), ("cpu",))],
        ),
        (Problem("no_small_sizes", Path("q.py")), []),
    ]


@pytest.mark.parametrize(("width", "terminal"), [(80, True), (130, True), (60, True), (80, False)])
def test_list_table_keeps_sizes_whole_and_shows_no_markup(width: int, terminal: bool) -> None:
    text = _render(display.catalog_table(_catalog()), width, terminal)
    assert "[dim]" not in text and "[/]" not in text and "…" not in text
    for figure in ("batch_size=512", "in_features=1024", "cuda_bf16x3 (cuda)", "cpp_fused_gemm (cpu)"):
        assert figure in text
    assert "none" in text and "—" in text


def test_gate_table_keeps_figures_whole_at_80_columns() -> None:
    checks = [
        GateCheck(LONG_PROBLEM, True, "fastest correct solution", 1.5, 3.7431, "cuda_bf16x3"),
        GateCheck("33_Gemm_Scale_BatchNorm", False, "speedup 0.123x below the required 1.25x", 1.25, 0.1234, "x"),
    ]
    text = _render(display.gate_table(checks), 80, terminal=True)
    assert "…" not in text
    for figure in ("3.74", "0.123", "1.5x", "1.25x", "pass", "FAIL"):
        assert figure in text


def _trend(label: str, percent: float) -> str:
    return (
        f"the {label}'s calls ran {percent:.2%} slower in the second half of timing than in the first: "
        f"{SPEED_CHANGED}, so this median depends on how long it was timed"
    )


def test_timing_warnings_are_said_once_per_run() -> None:
    degenerate = "every output is within tolerance of its own mean: a constant answer passes"
    results = [
        JobResult("p1", "a", Verdict.CORRECT, "", "cpu", warnings=[_trend("reference", 0.34), _trend("solution", 0.2)]),
        JobResult("p1", "b", Verdict.CORRECT, "", "cpu", warnings=[degenerate, _trend("solution", 0.12)]),
        JobResult("p2", "c", Verdict.CORRECT, "", "cpu", warnings=[_trend("reference", 0.05)]),
        JobResult("p1", "d", Verdict.CORRECT, "", "cpu", warnings=[degenerate]),
    ]
    out = io.StringIO()
    display.print_details(Console(file=out, width=200, color_system=None), results)
    text = out.getvalue()
    assert text.count("warning:") == 2, text
    assert "3 of 4 jobs: the device's speed changed while they were timed" in text
    assert "results.jsonl" in text
    assert "34.00%" not in text and "second half" not in text  # the detail stays in the results file
    assert text.count(degenerate) == 1


def test_one_job_with_a_timing_warning_gets_its_own_text() -> None:
    results = [
        JobResult("p1", "a", Verdict.CORRECT, "", "cpu", warnings=[_trend("solution", 0.34)]),
        JobResult("p1", "b", Verdict.CORRECT, "", "cpu"),
    ]
    out = io.StringIO()
    display.print_details(Console(file=out, width=300, color_system=None), results)
    text = out.getvalue()
    assert text.count("warning:") == 1
    assert "p1 / a: warning:" in text and "34.00% slower" in text


def test_gpu_warnings_are_summarised_too() -> None:
    throttled = "GPU slowed during the job (hw_slowdown): timings may be longer than on an unthrottled GPU"
    results = [
        JobResult("p1", s, Verdict.CORRECT, "", "cuda", warnings=[throttled, "other processes used the GPU (pids [1])"])
        for s in ("a", "b")
    ]
    out = io.StringIO()
    display.print_details(Console(file=out, width=300, color_system=None), results)
    text = out.getvalue()
    assert text.count("warning:") == 2
    assert "2 of 2 jobs: the GPU slowed" in text and "2 of 2 jobs: other processes used the GPU" in text
