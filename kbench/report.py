"""Flat tables of results (pandas) and their exports: CSV, JSON and Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kbench.results import JobResult

COLUMNS = [
    "problem",
    "solution",
    "verdict",
    "reason",
    "flags",
    "max_abs_error",
    "max_rel_error",
    "atol",
    "rtol",
    "ref_ms",
    "new_ms",
    "speedup",
    "speedup_low",
    "speedup_high",
    "ref_ms_alone",
    "compile_ms",
    "speedup_vs_compile",
    "ref_rse",
    "new_rse",
    "ref_trend",
    "new_trend",
    "ref_error_fp64",
    "new_error_fp64",
    "floor_ms",
    "matrix_flops",
    "compute_floor_ms",
    "roofline_fraction",
    "build_s",
    "build_cache_hit",
    "weights",
    "trials",
    "ref_timing_count",
    "new_timing_count",
    "timing_mode",
    "timing_fallback",
    "device",
    "overrides",
    "wall_s",
    "sm_clock_mhz_busy_mean",
    "gpu_throttle",
    "warnings",
]
MARKDOWN_COLUMNS = [
    "problem",
    "solution",
    "verdict",
    "max_abs_error",
    "ref_ms",
    "new_ms",
    "speedup",
    "roofline_fraction",
    "timing_mode",
    "flags",
]


def results_frame(results: list[JobResult]) -> pd.DataFrame:
    rows = []
    for result in results:
        row = result.to_dict()
        row["flags"] = ";".join(result.flags)
        row["overrides"] = json.dumps(result.overrides, sort_keys=True, default=str) if result.overrides else ""
        row["verdict"] = str(result.verdict)
        # What NVML saw during the job: two runs' medians can differ because the GPU ran at different clocks.
        row["sm_clock_mhz_busy_mean"] = result.device_state.get("sm_clock_mhz_busy_mean")
        row["gpu_throttle"] = ";".join(result.device_state.get("throttle", []))
        row["warnings"] = "; ".join(result.warnings)
        rows.append({column: row.get(column) for column in COLUMNS})
    return pd.DataFrame(rows, columns=COLUMNS)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False)


def write_json(frame: pd.DataFrame, path: Path) -> None:
    frame.to_json(path, orient="records", indent=2)


def to_markdown(frame: pd.DataFrame) -> str:
    return frame[MARKDOWN_COLUMNS].to_markdown(index=False, floatfmt=".4g")
