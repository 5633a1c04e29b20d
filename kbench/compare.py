"""Compare a solution's outputs with the reference's. Trusted side: runs in the parent process only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kbench.config import Tolerance


@dataclass
class Comparison:
    ok: bool
    reason: str
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    not_tensor: bool = False  # the solution returned something other than a plain torch.Tensor
    tampered: bool = False  # the saved output is not what the worker wrote


class UnreadableOutput(Exception):
    """An output file that cannot be loaded as plain tensors (missing, torn, or holding other objects)."""


def load_outputs(path: Path) -> dict[str, Any]:
    """Load a worker's saved outputs without running any code from the file (``weights_only``)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UnreadableOutput(f"no output file {path.name}") from None
    except Exception as exc:
        raise UnreadableOutput(f"{path.name} holds more than plain tensors: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict) or not isinstance(data.get("tensors"), list):
        raise UnreadableOutput(f"{path.name} is not an output record")
    return data


def _errors(new: torch.Tensor, ref: torch.Tensor, atol: float) -> tuple[float, float]:
    """Max absolute error, and max relative error with |ref| floored at atol (so zeros don't divide)."""
    both_finite = torch.isfinite(new) & torch.isfinite(ref)
    if not both_finite.any():
        return 0.0, 0.0
    a = new[both_finite].double()
    b = ref[both_finite].double()
    diff = (a - b).abs()
    rel = diff / b.abs().clamp_min(max(atol, torch.finfo(torch.float64).tiny))
    return float(diff.max()), float(rel.max())


def compare_tensor(new: torch.Tensor, ref: torch.Tensor, tolerance_for: Callable[[str], Tolerance]) -> Comparison:
    if new.shape != ref.shape:
        return Comparison(False, f"shape {tuple(new.shape)} != reference {tuple(ref.shape)}")
    if new.dtype != ref.dtype:
        return Comparison(False, f"dtype {new.dtype} != reference {ref.dtype}")
    tol = tolerance_for(str(ref.dtype).removeprefix("torch."))
    if not (ref.is_floating_point() or ref.is_complex()):
        equal = torch.equal(new, ref)
        mismatches = int((new != ref).sum())
        return Comparison(equal, "exact match" if equal else f"{mismatches} elements differ", 0.0, 0.0)
    max_abs, max_rel = _errors(new, ref, tol.atol)
    if not torch.equal(torch.isnan(new), torch.isnan(ref)):
        count = int((torch.isnan(new) != torch.isnan(ref)).sum())
        return Comparison(False, f"NaN in {count} places where the reference differs", max_abs, max_rel)
    if not torch.equal(torch.isinf(new) & (new > 0), torch.isinf(ref) & (ref > 0)) or not torch.equal(
        torch.isinf(new) & (new < 0), torch.isinf(ref) & (ref < 0)
    ):
        return Comparison(False, "Inf placement differs from the reference", max_abs, max_rel)
    if not torch.allclose(new, ref, atol=tol.atol, rtol=tol.rtol, equal_nan=True):
        bad = int((~torch.isclose(new, ref, atol=tol.atol, rtol=tol.rtol, equal_nan=True)).sum())
        return Comparison(
            False,
            f"{bad} of {ref.numel()} elements outside atol={tol.atol:g} rtol={tol.rtol:g} "
            f"(max abs error {max_abs:.3g})",
            max_abs,
            max_rel,
        )
    return Comparison(True, "within tolerance", max_abs, max_rel)


def compare_records(new: dict[str, Any], ref: dict[str, Any], tolerance_for: Callable[[str], Tolerance]) -> Comparison:
    if new.get("not_tensor"):
        return Comparison(False, f"output is a {new['not_tensor']}, not a plain torch.Tensor", not_tensor=True)
    if new.get("structure") != ref.get("structure"):
        return Comparison(False, f"output is a {new.get('structure')}, reference gives a {ref.get('structure')}")
    new_tensors, ref_tensors = new["tensors"], ref["tensors"]
    if len(new_tensors) != len(ref_tensors):
        return Comparison(False, f"{len(new_tensors)} outputs, reference gives {len(ref_tensors)}")
    worst = Comparison(True, "within tolerance", 0.0, 0.0)
    for index, (a, b) in enumerate(zip(new_tensors, ref_tensors, strict=True)):
        if type(a) is not torch.Tensor:
            return Comparison(False, f"output {index} is not a plain torch.Tensor", not_tensor=True)
        result = compare_tensor(a, b, tolerance_for)
        if len(ref_tensors) > 1 and not result.ok:
            result.reason = f"output {index}: {result.reason}"
        worst = merge(worst, result)
        if not result.ok:
            return worst
    return worst


def rounded_like(exact: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """A float64 evaluation's record with each floating tensor rounded to the dtype of the reference's tensor,
    so that it is compared exactly as the reference is (same dtype check, same tolerance)."""

    def rounded(e: Any, r: Any) -> Any:
        floating = isinstance(e, torch.Tensor) and isinstance(r, torch.Tensor)
        if floating and (e.is_floating_point() or e.is_complex()) and (r.is_floating_point() or r.is_complex()):
            return e.to(r.dtype)
        return e

    tensors = [rounded(e, r) for e, r in zip(exact["tensors"], ref["tensors"], strict=False)]
    return {**exact, "tensors": tensors + exact["tensors"][len(tensors) :]}


def merge(so_far: Comparison, latest: Comparison) -> Comparison:
    """Fold one more comparison in: the largest errors seen, the first failure's reason."""

    def biggest(x: float | None, y: float | None) -> float | None:
        values = [v for v in (x, y) if v is not None]
        return max(values) if values else None

    ok = so_far.ok and latest.ok
    reason = latest.reason if so_far.ok else so_far.reason
    return Comparison(
        ok,
        reason,
        biggest(so_far.max_abs_error, latest.max_abs_error),
        biggest(so_far.max_rel_error, latest.max_rel_error),
        so_far.not_tensor or latest.not_tensor,
        so_far.tampered or latest.tampered,
    )
