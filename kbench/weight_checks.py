"""Which reference tensors ModelNew stands for, and the checks that need them: its buffers after the trials,
and its answers after the weights change. Trusted side: the solution worker's account of the match is believed
only when it is well formed, and a check it makes impossible is never counted as passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kbench.compare import (
    Comparison,
)
from kbench.config import Tolerance
from kbench.output_checks import compare_state, worker_strings
from kbench.reference import ReferenceRun
from kbench.spec import PERTURBED
from kbench.weights import MODES as WEIGHT_MODES


@dataclass
class WeightsMatch:
    """The worker's account of which reference tensors (by the reference's names) ModelNew has a tensor for."""

    mode: str | None
    matched: set[str] = field(default_factory=set)
    unmatched: set[str] = field(default_factory=set)
    valid: bool = True


def _well_formed(value: Any, reference_tensors: set[str]) -> bool:
    if not isinstance(value, dict) or set(value) != {"mode", "matched", "unmatched"}:
        return False
    lists = [value["matched"], value["unmatched"]]
    if value["mode"] not in WEIGHT_MODES or not all(isinstance(v, list) and worker_strings(v) == v for v in lists):
        return False
    matched, unmatched = set(value["matched"]), set(value["unmatched"])
    return matched.isdisjoint(unmatched) and matched | unmatched == reference_tensors


def read_weights(message: dict[str, Any] | None, reference_tensors: set[str]) -> WeightsMatch:
    """The ``weights`` message, believed only when well formed and naming exactly the reference's own tensors:
    it comes from the solution's process. Anything else is invalid (the caller flags ``channel_tampering``)
    and counts as no tensor matched, so every check that needs a match stays unanswered, never passed."""
    value = message.get("weights") if message else None
    if not _well_formed(value, reference_tensors):
        return WeightsMatch(None, set(), set(reference_tensors), valid=False)
    return WeightsMatch(value["mode"], set(value["matched"]), set(value["unmatched"]))


def _changed(before: torch.Tensor | None, after: torch.Tensor) -> bool:
    """Whether a reference buffer differs after the trials from before them (NaN equal to NaN)."""
    if before is None or before.shape != after.shape or before.dtype != after.dtype:
        return True
    if after.is_floating_point() or after.is_complex():
        return not torch.allclose(before, after, rtol=0.0, atol=0.0, equal_nan=True)
    return not torch.equal(before, after)


def state_check(
    out_dir: Path,
    reference: ReferenceRun,
    match: WeightsMatch,
    tolerance_for: Callable[[str], Tolerance],
    announced: dict[str, tuple[str, int]],
) -> Comparison:
    """Buffers after the trials. One the reference's forward changes (or creates) must change alike in ModelNew,
    so it must have a tensor that stands for it; every matched one is compared."""
    dropped = [
        name
        for name, after in reference.state.items()
        if name not in match.matched and _changed(reference.initial_state.get(name), after)
    ]
    if dropped:
        which = f"buffer {dropped[0]} changes" if len(dropped) == 1 else f"buffers {', '.join(dropped)} change"
        it = "it" if len(dropped) == 1 else "them"
        return Comparison(False, f"{which} in the reference's forward, and ModelNew keeps no tensor that matches {it}")
    matched = {name: tensor for name, tensor in reference.state.items() if name in match.matched}
    problem = compare_state(out_dir, matched, tolerance_for, announced)
    return Comparison(not problem, problem or "buffers match")


def weights_check(
    compare: Callable[[str, list[dict[str, Any]]], tuple[Comparison, list[dict[str, Any]]]],
    reference: ReferenceRun,
    match: WeightsMatch,
    checks: list[tuple[str, Comparison]],
) -> tuple[str, Comparison] | None:
    """The perturbed-weight trials, when every floating reference tensor reached ModelNew. When one did not,
    the check cannot be run faithfully: ``unchecked_weights`` (unless an answer was already shown wrong)."""
    if not reference.perturbed or not reference.tensors:  # perturbation_trials: 0, or no weights to change
        return None
    unreached = [name for name, floating in reference.tensors.items() if floating and name in match.unmatched]
    if not unreached:
        return ("stale_weights", compare(PERTURBED, reference.perturbed)[0]) if match.matched else None
    if not all(check.ok for _, check in checks):
        return None
    them = "it as a parameter or buffer" if len(unreached) == 1 else "them as parameters or buffers"
    reason = (
        f"the perturbed-weight check cannot run: ModelNew keeps no tensor that matches the reference's "
        f"{', '.join(unreached)}; register {them} with the reference's names or shapes "
        "so kbench can check that the solution follows weight changes"
    )
    return "unchecked_weights", Comparison(False, reason)
