"""Statistics of timing samples: medians, their relative standard error, and the speedup's interval."""

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
