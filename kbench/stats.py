"""Statistics of timing samples: medians, their relative standard error, their trend, and the speedup's
interval."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch

Z_95 = 1.959964


def median_ms(samples: Sequence[float]) -> float | None:
    return statistics.median(samples) if samples else None


def median_rse(samples: Sequence[float]) -> float:
    """Relative standard error of the median, from its distribution-free 95 % confidence interval (the
    order statistics n/2 ± 1.96·√n/2): (upper − lower) / (2 · 1.96) / median."""
    n = len(samples)
    if n < 3:
        return math.inf
    ordered = sorted(samples)
    half_width = Z_95 * math.sqrt(n) / 2
    lower = ordered[max(0, math.floor(n / 2 - half_width))]
    upper = ordered[min(n - 1, math.ceil(n / 2 + half_width))]
    middle = statistics.median(ordered)
    return (upper - lower) / (2 * Z_95) / middle if middle > 0 else math.inf


def median_trend(samples: Sequence[float]) -> tuple[float, float] | None:
    """How far the median moved while the samples were taken, in the order given: (median of the second half
    minus median of the first half) / median of all, with the standard error of that difference, from each
    half's ``median_rse``. Samples from a steady device give a trend within about two errors of 0; a GPU that
    slows as it heats, or runs into its power cap, gives more. None below 6 samples."""
    half = len(samples) // 2
    if half < 3:
        return None
    first, second, middle = samples[:half], samples[-half:], statistics.median(samples)
    if middle <= 0:
        return None
    trend = (statistics.median(second) - statistics.median(first)) / middle
    return trend, math.hypot(median_rse(first), median_rse(second))


def speedup_interval(
    ref_ms: Sequence[float], new_ms: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """95 % interval of median(ref) / median(new) by a paired bootstrap: rounds (one reference call and one
    solution call, timed back to back) are resampled together, so drift shared by a round cancels."""
    if len(ref_ms) != len(new_ms) or len(ref_ms) < 3:
        return None
    ref, new = torch.tensor(ref_ms, dtype=torch.float64), torch.tensor(new_ms, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(ref), (resamples, len(ref)), generator=generator)
    ratios = ref[picks].median(dim=1).values / new[picks].median(dim=1).values
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return low, high
