"""The flat table of results: one row per job, the columns every export shares (pandas for CSV and Markdown,
plain records for JSON). The formats themselves live in ``kbench.export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def results_records(results: list[JobResult]) -> list[dict[str, Any]]:
    """One dict per job with the table's columns, in native types: lists stay lists, numbers keep full
    precision (the JSON export; a CSV cell needs the flattened form of ``results_frame``)."""
    records = []
    for result in results:
        row = result.to_dict()
        row["verdict"] = str(result.verdict)
        # What NVML saw during the job: two runs' medians can differ because the GPU ran at different clocks.
        row["sm_clock_mhz_busy_mean"] = result.device_state.get("sm_clock_mhz_busy_mean")
        row["gpu_throttle"] = list(result.device_state.get("throttle", []))
        records.append({column: row.get(column) for column in COLUMNS})
    return records


def results_frame(results: list[JobResult]) -> pd.DataFrame:
    rows = []
    for row in results_records(results):
        row["flags"] = ";".join(row["flags"])
        row["overrides"] = json.dumps(row["overrides"], sort_keys=True, default=str) if row["overrides"] else ""
        row["gpu_throttle"] = ";".join(row["gpu_throttle"])
        row["warnings"] = "; ".join(row["warnings"])
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Any flat table as CSV (``kbench compare --csv`` writes its own table through this)."""
    frame.to_csv(path, index=False)
