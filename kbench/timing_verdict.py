"""The timing a solution worker reports, judged. Trusted side: samples arrive on the worker's pipe and may be
forged, so only well-formed ones in the configured count are used, and the mode they claim must be the one
asked for (or events, with a reason)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kbench.config import KbenchConfig
from kbench.results import SPEED_CHANGED
from kbench.stats import Z_95, median_ms, median_rse, median_trend, speedup_interval

# In every warning about a median that moved while it was timed: kbench.display finds them by it, to say them
# once per run rather than once per job.


@dataclass
class TimingFacts:
    new_ms: float | None = None
    ref_ms: float | None = None
    count: int | None = None
    speedup: float | None = None
    interval: tuple[float, float] | None = None
    new_rse: float | None = None
    ref_rse: float | None = None
    new_trend: float | None = None  # see stats.median_trend
    ref_trend: float | None = None
    mode: str | None = None
    fallback: str | None = None
    flags: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)  # the device's speed changed while it was timed


def timing_mode_used(payload: dict[str, Any], requested: str) -> tuple[str, str | None] | None:
    """(mode, fallback reason) as the worker reports them, or None when that cannot be true: a worker times in
    the requested mode, or falls back to events and says why."""
    mode, fallback = payload.get("timing_mode"), payload.get("timing_fallback")
    if mode == requested and fallback is None:
        return requested, None
    if mode == "events" and requested != "events" and isinstance(fallback, str) and fallback.strip():
        return "events", fallback.strip()[:500]
    return None


def judge_timing(
    payload: dict[str, Any], trusted_ref_ms: float | None, config: KbenchConfig, on_cuda: bool
) -> TimingFacts:
    """Medians, the paired speedup and its interval, the timing mode used, and whether the interleaved
    reference was held back."""
    least, most = config.timing.repeats, config.timing.max_repeats
    new = _valid_samples(payload.get("timing_ms"), least, most)
    ref = _valid_samples(payload.get("ref_timing_ms"), least, most)
    used = timing_mode_used(payload, config.timing.mode)
    if new is None or ref is None or len(new) != len(ref) or used is None:
        return TimingFacts(flags={"bad_timing"})
    facts = TimingFacts(median_ms(new), median_ms(ref), len(new), new_rse=median_rse(new), ref_rse=median_rse(ref))
    facts.mode, facts.fallback = used
    facts.speedup = facts.ref_ms / facts.new_ms if facts.ref_ms and facts.new_ms else None
    facts.interval = speedup_interval(ref, new)
    facts.ref_trend, ref_warning = _trend("reference", ref, config.timing.target_rse)
    facts.new_trend, new_warning = _trend("solution", new, config.timing.target_rse)
    facts.warnings = [warning for warning in (ref_warning, new_warning) if warning]
    # The reference beside the solution runs in the solution's process. Slower there than in the trusted
    # worker, beyond the allowed drift, means the solution held it back to inflate its speedup. Not judged on
    # the CPU, where separate processes' timings differ too much (docs/timing.md).
    if (
        on_cuda
        and trusted_ref_ms
        and facts.ref_ms
        and facts.ref_ms > trusted_ref_ms * (1 + config.timing.reference_drift)
    ):
        facts.flags.add("reference_slowed")
    return facts


def _trend(label: str, samples: list[float], target_rse: float) -> tuple[float | None, str | None]:
    """The median's trend over the timed rounds, and a warning when it is both beyond the noise of the two
    halves and larger than the precision asked for: the median's own error then understates how far another
    run may land, since it depends on how long the device was timed."""
    found = median_trend(samples)
    if found is None:
        return None, None
    trend, error = found
    if abs(trend) <= max(target_rse, Z_95 * error):
        return trend, None
    way = "slower" if trend > 0 else "faster"
    return trend, (
        f"the {label}'s calls ran {abs(trend):.2%} {way} in the second half of timing than in the first: "
        f"{SPEED_CHANGED}, so this median depends on how long it was timed"
    )


def _valid_samples(samples: Any, least: int, most: int) -> list[float] | None:
    if not isinstance(samples, list) or not least <= len(samples) <= most:
        return None
    if not all(isinstance(s, int | float) and math.isfinite(s) and s > 0 for s in samples):
        return None
    return [float(s) for s in samples]
