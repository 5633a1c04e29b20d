"""HTML: one self-contained page per run (plotly's JavaScript inlined, so it opens offline and can be kept as
a CI artifact): the run header, a verdict summary, speedup per job with its 95 % interval, the fast_p curve,
the geomean, the roofline fraction where known, and the per-job table. The numbers behind the charts are also
embedded as JSON (``<script type="application/json" id="kbench-data">``) for tools that check the file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from kbench.export import html_charts
from kbench.export.base import ExportContext, Exporter
from kbench.export.summary import fast_p_curve, run_facts, summary
from kbench.report import results_records
from kbench.results import JobResult, Verdict

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1150px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
#jobs { font-size: 0.8rem; } #jobs td.name { overflow-wrap: anywhere; min-width: 9rem; } .wide { overflow-x: auto; }
.row { display: flex; gap: 3rem; flex-wrap: wrap; align-items: flex-start; }
.correct { color: #2d6a4f; font-weight: 600; } .failed { color: #c1121f; font-weight: 600; }
.note { color: #666; font-style: italic; } .about { color: #444; font-size: 0.85rem; }
.reason { min-width: 12rem; max-width: 28rem; }
"""
CHART_CONFIG = {"displaylogo": False, "responsive": True}


def _num(value: float | None, fmt: str = ".4g", suffix: str = "") -> str:
    return "—" if value is None else format(value, fmt) + suffix


def _verdict(verdict: str) -> str:
    css = "correct" if verdict == Verdict.CORRECT else "failed"
    return f'<span class="{css}">{escape(verdict)}</span>'


def _header(context: ExportContext) -> str:
    rows = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in run_facts(context.run_id, context.metadata)
    )
    return f'<table id="run">{rows}</table>' if rows else ""


def _summary_section(facts: dict[str, Any]) -> str:
    jobs = facts["jobs"]
    verdict_rows = "".join(
        f'<tr><td>{_verdict(v)}</td><td class="num">{n}</td><td class="num">{n / jobs:.0%}</td></tr>'
        for v, n in facts["verdicts"].items()
    )
    geomean = facts["geomean_speedup"]
    numbers = [
        ("jobs", str(jobs)),
        ("correct", f"{facts['correct']} of {jobs}"),
        ("geomean speedup (correct jobs)", _num(geomean, ".3g", "x")),
        ("largest speedup", _num(facts["max_speedup"], ".3g", "x")),
        ("fast_0 (share correct)", f"{facts['fast_0']:.1%}"),
        ("fast_1 (correct and faster than eager)", f"{facts['fast_1']:.1%}"),
        ("fast_2 (correct and over 2x as fast)", f"{facts['fast_2']:.1%}"),
    ]
    number_rows = "".join(f'<tr><th>{escape(k)}</th><td class="num">{v}</td></tr>' for k, v in numbers)
    return (
        '<h2>Summary</h2><div class="row">'
        f'<table id="verdicts"><tr><th>verdict</th><th>jobs</th><th>share</th></tr>{verdict_rows}</table>'
        f'<table id="numbers">{number_rows}</table></div>'
    )


def _job_rows(results: Sequence[JobResult]) -> str:
    rows = []
    for r in results:
        interval = ""
        if r.speedup is not None and r.speedup_low is not None and r.speedup_high is not None:
            interval = f" [{r.speedup_low:.3g}, {r.speedup_high:.3g}]"
        speedup = _num(r.speedup, ".3g", "x") + interval
        cells = [
            f'<td class="name">{escape(r.problem)}</td>',
            f'<td class="name">{escape(r.solution)}</td>',
            f'<td style="white-space: nowrap">{_verdict(str(r.verdict))}</td>',
            f'<td class="num">{speedup}</td>',
            f'<td class="num">{_num(r.ref_ms)}</td>',
            f'<td class="num">{_num(r.new_ms)}</td>',
            f'<td class="num">{_num(r.roofline_fraction, ".2f")}</td>',
            f'<td class="num">{_num(r.max_abs_error, ".2e")}</td>',
            f'<td class="name">{escape(", ".join(r.flags))}</td>',
            f'<td class="reason">{escape(r.reason)}</td>',
        ]
        rows.append("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>")
    return "".join(rows)


def _jobs_section(results: Sequence[JobResult]) -> str:
    heads = (
        "problem",
        "solution",
        "verdict",
        "speedup [95 %]",
        "ref ms",
        "new ms",
        "roofline",
        "max abs err",
        "flags",
        "reason",
    )
    head = "".join(f"<th>{h}</th>" for h in heads)
    return f'<h2>Jobs</h2><div class="wide"><table id="jobs"><tr>{head}</tr>{_job_rows(results)}</table></div>'


# Per chart: heading, div id, what it shows, and what the page says when the run has nothing to draw.
CHARTS = [
    (
        "Speedup per job",
        "speedup-chart",
        "Correct jobs only: eager median / solution median, with the 95 % interval of a paired bootstrap over "
        "timing rounds. Dashed: eager (1x); dotted: the geomean.",
        "No correct job with a measured speedup: nothing to chart.",
    ),
    (
        "fast_p",
        "fast-p-chart",
        "KernelBench's fast_p: the share of all jobs that are correct and more than p times as fast as eager. "
        "fast_0 is the share correct; fast_1 the share correct and faster than eager.",
        "No jobs: no fast_p.",
    ),
    (
        "Roofline fraction",
        "roofline-chart",
        "The least time the job's bytes and matrix products take at this device's measured ceilings, divided by "
        "the solution's median: 1.0 is at the floor. Jobs with no known floor are left out.",
        "roofline_fraction is unknown for every job: run `kbench calibrate` on the machine before `kbench bench`.",
    ),
]


def _charts(results: Sequence[JobResult]) -> str:
    """The charts, or a note where one has nothing to draw. plotly.js goes in once, with the first chart drawn:
    later charts use the same copy."""
    figures = [
        html_charts.speedup_figure(results),
        html_charts.fast_p_figure(results),
        html_charts.roofline_figure(results),
    ]
    parts, js_included = [], False
    for (title, div_id, about, empty), figure in zip(CHARTS, figures, strict=True):
        parts.append(f"<h2>{escape(title)}</h2>")
        if figure is None:
            parts.append(f'<p class="note" id="{div_id}-missing">{escape(empty)}</p>')
            continue
        parts.append(f'<p class="about">{escape(about)}</p>')
        parts.append(
            figure.to_html(full_html=False, include_plotlyjs=not js_included, div_id=div_id, config=CHART_CONFIG)
        )
        js_included = True
    return "".join(parts)


def _data_script(results: Sequence[JobResult], context: ExportContext, facts: dict[str, Any]) -> str:
    ps, shares = fast_p_curve(results)
    data = {
        "run_id": context.run_id,
        "summary": facts,
        "fast_p": {"p": ps, "share": shares},
        "jobs": results_records(list(results)),
    }
    # '<' only occurs inside JSON strings, where \u003c means the same: no "</script>" in the data can end the tag.
    text = json.dumps(data, allow_nan=False, default=str).replace("<", "\\u003c")
    return f'<script type="application/json" id="kbench-data">{text}</script>'


class HtmlExporter(Exporter):
    name = "html"
    suffix = ".html"

    def render(self, results: Sequence[JobResult], context: ExportContext) -> str:
        results = list(results)
        facts = summary(results)
        title = f"kbench report {context.run_id}".strip()
        if results:
            body = _summary_section(facts) + _charts(results) + _jobs_section(results)
        else:
            body = '<p class="note" id="no-jobs">This run has no finished jobs.</p>'
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{_header(context)}{body}"
            f"{_data_script(results, context, facts)}</body></html>\n"
        )
