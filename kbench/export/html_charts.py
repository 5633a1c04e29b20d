"""The HTML report's charts, as plotly figures: speedup per job with its 95 % interval, the fast_p curve, and
the roofline fraction. Each returns None when the run has nothing to draw, and the page says why instead."""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from kbench.export.summary import fast_p_curve, geomean_speedup
from kbench.results import JobResult, Verdict

TEMPLATE = "plotly_white"
ROW_PX = 34  # height per job in the per-job charts, so long runs stay legible


def _label(result: JobResult) -> str:
    return f"{result.problem} / {result.solution}"


def _height(rows: int) -> int:
    return max(240, ROW_PX * rows + 110)


def _vline(
    figure: go.Figure, x: float, text: str, color: str, dash: str, log: bool = False, left: bool = False
) -> None:
    """A vertical reference line with its label. The label is added by hand: plotly places a shape at x on a log
    axis but an annotation at log10(x), so add_vline's own label lands far off (and stretches the axis)."""
    figure.add_vline(x=x, line_dash=dash, line_color=color)
    figure.add_annotation(
        x=math.log10(x) if log else x,
        y=1.0,
        yref="paper",
        yanchor="bottom",
        xanchor="right" if left else "left",  # which side of the line the label sits: two labels never overlap
        text=text,
        showarrow=False,
        font={"color": color, "size": 11},
    )


def _layout(figure: go.Figure, height: int) -> None:
    # No chart titles: the page's headings and notes say what each chart shows.
    figure.update_layout(template=TEMPLATE, height=height, showlegend=False, margin={"t": 45, "b": 50, "r": 40})


def speedup_figure(results: Sequence[JobResult]) -> go.Figure | None:
    """A dot per correct job at its speedup, with its bootstrap interval as an error bar; eager (1x) and the
    geomean as vertical lines. Log axis when speedups span a wide range, so 0.5x and 2x sit equally far from 1x."""
    timed = sorted(
        (r for r in results if r.verdict == Verdict.CORRECT and r.speedup is not None and r.speedup > 0),
        key=lambda r: r.speedup or 0.0,
    )
    if not timed:
        return None
    speedups = [r.speedup or 0.0 for r in timed]
    lows = [r.speedup_low if r.speedup_low is not None else s for r, s in zip(timed, speedups, strict=True)]
    highs = [r.speedup_high if r.speedup_high is not None else s for r, s in zip(timed, speedups, strict=True)]
    figure = go.Figure(
        go.Scatter(
            x=speedups,
            y=[_label(r) for r in timed],
            mode="markers",
            marker={"size": 10, "color": "#2a6f97"},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [h - s for h, s in zip(highs, speedups, strict=True)],
                "arrayminus": [s - lo for s, lo in zip(speedups, lows, strict=True)],
                "thickness": 2,
                "width": 6,
            },
            customdata=list(zip(lows, highs, strict=True)),
            hovertemplate="%{y}<br>speedup %{x:.4g}x [%{customdata[0]:.4g}, %{customdata[1]:.4g}]<extra></extra>",
            name="speedup",
        )
    )
    log = max(*highs, 1.0) / min(*lows, 1.0) > 8
    geomean = geomean_speedup(results)
    faster = geomean is None or geomean >= 1.0
    _vline(figure, 1.0, "eager (1x)", "#666", "dash", log, left=faster)
    if geomean is not None and len(timed) > 1:
        _vline(figure, geomean, f"geomean {geomean:.3g}x", "#c1121f", "dot", log, left=not faster)
    figure.update_xaxes(type="log" if log else "linear", title="speedup over eager (x), 95 % interval")
    figure.update_yaxes(automargin=True)
    _layout(figure, _height(len(timed)) + 20)
    return figure


def fast_p_figure(results: Sequence[JobResult]) -> go.Figure | None:
    """KernelBench's fast_p as a step function of p: the share of all jobs correct and faster than p x eager."""
    if not results:
        return None
    ps, shares = fast_p_curve(results)
    figure = go.Figure(
        go.Scatter(
            x=ps,
            y=shares,
            mode="lines+markers",
            line_shape="hv",
            line={"color": "#2a6f97", "width": 3},
            hovertemplate="p = %{x:.4g}: %{y:.1%} of jobs correct and faster than p x eager<extra></extra>",
            name="fast_p",
        )
    )
    _vline(figure, 1.0, "p = 1", "#666", "dash")
    figure.update_xaxes(title="p (speedup over eager)", range=[0, max(ps[-1], 1.0) * 1.05], rangemode="tozero")
    figure.update_yaxes(title="fast_p (share of jobs)", range=[0, 1.05], tickformat=".0%")
    _layout(figure, 360)
    return figure


def roofline_figure(results: Sequence[JobResult]) -> go.Figure | None:
    """Each job's fraction of its roofline floor (1.0 = as fast as the device's measured ceilings allow)."""
    known = sorted((r for r in results if r.roofline_fraction is not None), key=lambda r: r.roofline_fraction or 0.0)
    if not known:
        return None
    fractions = [r.roofline_fraction or 0.0 for r in known]
    figure = go.Figure(
        go.Bar(
            x=fractions,
            y=[_label(r) for r in known],
            orientation="h",
            marker={"color": "#588157"},
            text=[f"{f:.0%}" for f in fractions],
            textposition="outside",
            hovertemplate="%{y}<br>roofline fraction %{x:.3f}<extra></extra>",
            name="roofline fraction",
        )
    )
    _vline(figure, 1.0, "roofline floor", "#666", "dash")
    figure.update_xaxes(title="fraction of the roofline floor", range=[0, max(*fractions, 1.0) * 1.15])
    figure.update_yaxes(automargin=True)
    _layout(figure, _height(len(known)))
    return figure
