"""Numbers about a problem and a solution beyond pass/fail. Trusted side (the parent).

- accuracy against a float64 evaluation of the reference, next to PyTorch fp32's own error;
- the physics floor: the least time moving the problem's bytes can take at the device's peak bandwidth;
- the roofline floor: the same at the bandwidth `kbench calibrate` measured, or the time the matrix products
  take at the fastest rate it measured, whichever is larger;
- degenerate problems: outputs that barely depend on the input, or are nearly constant, so that an answer
  ignoring the input would pass the tolerance.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from kbench.compare import flat_chunks
from kbench.config import Tolerance

if TYPE_CHECKING:
    from kbench.calibrate import Ceilings


def relative_error(new: dict[str, Any], exact: dict[str, Any]) -> float | None:
    """‖new − exact‖ / ‖exact‖ over all output tensors (finite elements), or None when not comparable."""
    diff_sq = ref_sq = 0.0
    pairs = list(zip(new.get("tensors", []), exact.get("tensors", []), strict=False))
    if not pairs or len(new.get("tensors", [])) != len(exact.get("tensors", [])):
        return None
    for a, b in pairs:
        if a.shape != b.shape or not (a.is_floating_point() and b.is_floating_point()):
            return None
        for a_part, b_part in flat_chunks(a, b):  # slice by slice: outputs can be hundreds of MiB
            finite = torch.isfinite(a_part) & torch.isfinite(b_part)
            if not bool(finite.all()):  # picking the finite elements copies the slice: only where some are not
                a_part, b_part = a_part[finite], b_part[finite]
            a64, b64 = a_part.double(), b_part.double()  # the tensors themselves when float64: never changed
            diff_sq += float((a64 - b64).square_().sum())
            ref_sq += float(b64.square().sum())
    if ref_sq == 0.0:
        return 0.0 if diff_sq == 0.0 else math.inf
    return math.sqrt(diff_sq / ref_sq)


def worst_relative_error(outputs: list[dict[str, Any]], exact: list[dict[str, Any]]) -> float | None:
    errors = [relative_error(a, b) for a, b in zip(outputs, exact, strict=False)]
    if not errors or any(e is None for e in errors):
        return None
    return max(e for e in errors if e is not None)


def precision_loss(new_error: float | None, ref_error: float | None, factor: float, floor: float) -> bool:
    if new_error is None or ref_error is None:
        return False
    return new_error > factor * max(ref_error, floor)


def floor_ms(moved_bytes: int, bandwidth_bytes_per_s: float | None) -> float | None:
    if not bandwidth_bytes_per_s or moved_bytes <= 0:
        return None
    return moved_bytes / bandwidth_bytes_per_s * 1e3


def compute_floor_ms(matrix_flops: int | None, ceilings: Ceilings | None) -> float | None:
    """The least time one call's matrix products take at the fastest rate `kbench calibrate` measured."""
    rate = ceilings.fastest_flops_per_s() if ceilings else None
    return matrix_flops / rate * 1e3 if rate and matrix_flops else None


def roofline_floor_ms(moved_bytes: int, matrix_flops: int | None, ceilings: Ceilings | None) -> float | None:
    """The larger of the time one call's bytes take at the measured copy bandwidth and the time its matrix
    products take at the fastest measured rate; None before `kbench calibrate` has run on this device."""
    if ceilings is None:
        return None
    floors = [floor_ms(moved_bytes, ceilings.copy_gbs * 1e9), compute_floor_ms(matrix_flops, ceilings)]
    return max((f for f in floors if f), default=None)


def degenerate_warnings(outputs: list[dict[str, Any]], tolerance_for: Any) -> list[str]:
    """Warnings about a problem whose reference outputs a cheap wrong answer would match within tolerance."""
    tensors = [record.get("tensors", []) for record in outputs]
    if len(tensors) < 2 or not tensors[0]:
        return []
    warnings = []
    firsts = tensors[0]
    floating = [t.is_floating_point() for t in firsts]
    if all(floating):
        tol: list[Tolerance] = [tolerance_for(str(t.dtype).removeprefix("torch.")) for t in firsts]

        def close(a: torch.Tensor, b: torch.Tensor, k: int) -> bool:
            return a.shape == b.shape and torch.allclose(a, b, atol=tol[k].atol, rtol=tol[k].rtol, equal_nan=True)

        if all(close(trial[k], firsts[k], k) for trial in tensors[1:] for k in range(len(firsts))):
            warnings.append(
                "outputs for different inputs agree within tolerance: an answer that ignores the input passes"
            )
        if all(
            close(t, torch.full_like(t, float(t.double().mean())), k)
            for trial in tensors
            for k, t in enumerate(trial)
            if t.numel()
        ):
            warnings.append("every output is within tolerance of its own mean: a constant answer passes")
    return warnings
