"""Compare a solution's outputs with the reference's. Trusted side: runs in the parent process only."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
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


def load_outputs(path: Path, content: bytes | None = None) -> dict[str, Any]:
    """Load a worker's saved outputs without running any code from the file (``weights_only``); from
    ``content``, the file's bytes, when they were read already (to check their digest)."""
    try:
        data = torch.load(path if content is None else io.BytesIO(content), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UnreadableOutput(f"no output file {path.name}") from None
    except Exception as exc:
        raise UnreadableOutput(f"{path.name} holds more than plain tensors: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict) or not isinstance(data.get("tensors"), list):
        raise UnreadableOutput(f"{path.name} is not an output record")
    return data


# Elements per slice when comparing: large outputs (hundreds of MiB) are compared slice by slice, so the
# temporaries stay small instead of costing several copies of the whole tensor in double.
CHUNK = 1 << 20


def flat_chunks(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Matching slices of the flattened tensors (all of one shape)."""
    flat = [t.reshape(-1) for t in tensors]
    for start in range(0, flat[0].numel(), CHUNK):
        yield tuple(f[start : start + CHUNK] for f in flat)


@dataclass
class _Tally:
    """What one pass over a floating output finds: errors over the elements finite in both, and mismatches."""

    max_abs: float = 0.0
    max_rel: float = 0.0  # |ref| floored at atol, so zeros don't divide
    nan_misplaced: int = 0
    inf_misplaced: int = 0
    not_close: int = 0


def _tally(new: torch.Tensor, ref: torch.Tensor, tol: Tolerance) -> _Tally:
    tally = _Tally()
    floor = max(tol.atol, torch.finfo(torch.float64).tiny)
    for a, b in flat_chunks(new, ref):
        tally.nan_misplaced += int((torch.isnan(a) != torch.isnan(b)).sum())
        a_inf, b_inf = torch.isinf(a), torch.isinf(b)
        tally.inf_misplaced += int(((a_inf & (a > 0)) != (b_inf & (b > 0))).sum())
        tally.inf_misplaced += int(((a_inf & (a < 0)) != (b_inf & (b < 0))).sum())
        tally.not_close += int((~torch.isclose(a, b, atol=tol.atol, rtol=tol.rtol, equal_nan=True)).sum())
        finite = torch.isfinite(a) & torch.isfinite(b)
        if not bool(finite.all()):
            a, b = a[finite], b[finite]
        if a.numel():
            diff = (a.double() - b.double()).abs()
            tally.max_abs = max(tally.max_abs, float(diff.max()))
            tally.max_rel = max(tally.max_rel, float((diff / b.double().abs().clamp_min(floor)).max()))
    return tally


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
    tally = _tally(new, ref, tol)
    max_abs, max_rel = tally.max_abs, tally.max_rel
    if tally.nan_misplaced:
        return Comparison(False, f"NaN in {tally.nan_misplaced} places where the reference differs", max_abs, max_rel)
    if tally.inf_misplaced:
        return Comparison(False, "Inf placement differs from the reference", max_abs, max_rel)
    if tally.not_close:
        return Comparison(
            False,
            f"{tally.not_close} of {ref.numel()} elements outside atol={tol.atol:g} rtol={tol.rtol:g} "
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
