"""Compare a solution's outputs with the reference's. Trusted side: runs in the parent process only."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kbench import tensor_files
from kbench.config import Tolerance


@dataclass
class Comparison:
    ok: bool
    reason: str
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    not_tensor: bool = False  # the solution returned something other than a plain torch.Tensor
    tampered: bool = False  # the saved output is not what the worker wrote
    # Why allclose against the fp32 reference alone (the kernelbench rule) fails an output the float64 rule passed;
    # empty when it does not (or the float64 rule was not used).
    outside_fp32: str = ""


class UnreadableOutput(Exception):
    """An output file that cannot be loaded as plain tensors (missing, torn, or holding other objects)."""


def load_record(path: Path, content: tensor_files.Content | None = None) -> dict[str, Any]:
    """A worker's file (``kbench.tensor_files``: nothing in it is run); from ``content``, the file's bytes, when
    they were read already (to check their digest)."""
    try:
        return tensor_files.decode(content if content is not None else tensor_files.read_bytes(path))
    except FileNotFoundError:
        raise UnreadableOutput(f"no output file {path.name}") from None
    except (tensor_files.UnreadableTensors, OSError) as exc:
        raise UnreadableOutput(f"{path.name} is unreadable: {exc}".splitlines()[0]) from None


def load_outputs(path: Path, content: tensor_files.Content | None = None) -> dict[str, Any]:
    """A worker's saved outputs: a record whose ``tensors`` are plain tensors."""
    data = load_record(path, content)
    tensors = data.get("tensors")
    if not isinstance(tensors, list) or not all(type(t) is torch.Tensor for t in tensors):
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


# Key of a float64 evaluation's record, as the parent keeps it: PyTorch fp32's own error on each output tensor.
FP32_ERROR = "fp32_error"


@dataclass(frozen=True)
class Exact:
    """One output's float64 evaluation, for the float64 rule (docs/verdicts.md, "Matching outputs")."""

    tensor: torch.Tensor  # float64, or rounded to fp32 (see exact_record)
    fp32_error: float  # E: PyTorch fp32's largest error on this output, max |r32 - r64|
    factor: float  # C: an element may be C * E from the float64 evaluation, beyond the tolerance


def fp32_error(ref: torch.Tensor, exact: torch.Tensor) -> float | None:
    """PyTorch fp32's own error on one output: the largest |r32 - r64| over the elements finite in both (0.0 when
    none are); None when the two cannot be matched element by element."""
    if ref.shape != exact.shape or not (ref.is_floating_point() and exact.is_floating_point()):
        return None
    worst = 0.0
    for r, e in flat_chunks(ref, exact):
        distance = (r.double() - e.double()).abs_()
        largest = float(distance.max())  # NaN or Inf only where a value is not finite
        if not math.isfinite(largest):
            # Between finite values the distance is finite: NaN and Inf here come from a non-finite one, left out.
            largest = float(distance.nan_to_num_(nan=0.0, posinf=0.0).max())
        worst = max(worst, largest)
    return worst


def exact_record(exact: dict[str, Any], ref: dict[str, Any], narrow: bool) -> dict[str, Any]:
    """A float64 evaluation's record as the parent keeps it: with PyTorch fp32's own error on each output
    (``FP32_ERROR``, measured at full precision; a record that carries them already keeps them) and, when
    ``narrow``, each floating tensor rounded to fp32 (a float64 output stays float64). Rounding halves the memory
    and moves a value by at most half an fp32 ulp (relative 6e-8), far inside every tolerance and every fp32 error E
    that matters."""
    pairs = list(zip(exact["tensors"], ref["tensors"], strict=False))
    errors = exact.get(FP32_ERROR) or [fp32_error(r, e) if _floating_pair(e, r) else None for e, r in pairs]

    def kept(e: Any, r: Any) -> Any:
        return e.to(torch.promote_types(r.dtype, torch.float32)) if narrow and _floating_pair(e, r) else e

    tensors = [kept(e, r) for e, r in pairs] + exact["tensors"][len(pairs) :]
    return {**exact, "tensors": tensors, FP32_ERROR: errors}


def _floating_pair(exact: Any, ref: Any) -> bool:
    return all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (exact, ref))


@dataclass
class _Tally:
    """What one pass over a floating output finds: errors over the elements finite in both, and mismatches."""

    max_abs: float = 0.0
    max_rel: float = 0.0  # |ref| floored at atol, so zeros don't divide
    nan_misplaced: int = 0
    inf_misplaced: int = 0
    not_close: int = 0  # outside tolerance of the fp32 reference
    beyond: int = 0  # float64 rule: outside tolerance of the float64 evaluation, and more than C * E from it
    max_abs_fp64: float = 0.0  # float64 rule: the largest distance from the float64 evaluation


def _beyond_float64(
    new64: torch.Tensor, ref: torch.Tensor, exact: torch.Tensor, tol: Tolerance, allowance: float
) -> tuple[int, float]:
    """One slice under the float64 rule: (elements further from the float64 evaluation than both the tolerance
    and ``allowance`` = C * E, the largest distance from it). ``new64`` is the answer in double. Elements where
    the answer is not finite are left out: NaN/Inf placement is judged against the fp32 reference, apart. Where
    the float64 value is not finite but the fp32 one is, the fp32 one stands in."""
    truth = exact.double()
    if not bool(torch.isfinite(truth).all()):
        truth = torch.where(torch.isfinite(truth), truth, ref.double())
    distance = (new64 - truth).abs_().nan_to_num_(nan=0.0, posinf=0.0)  # NaN, Inf: from a non-finite value
    limit = truth.abs().mul_(tol.rtol).add_(tol.atol).clamp_min_(allowance)
    return int((distance > limit).sum()), float(distance.max())


def _tally(new: torch.Tensor, ref: torch.Tensor, tol: Tolerance, exact: Exact | None = None) -> _Tally:
    tally = _Tally()
    allowance = exact.factor * exact.fp32_error if exact is not None else 0.0
    extra = [exact.tensor] if exact is not None else []
    for a, b, *e in flat_chunks(new, ref, *extra):
        truth = e[0] if e else None
        if not _tally_narrow(tally, a, b, truth, tol, allowance):
            _tally_wide(tally, a, b, truth, tol, allowance)
    return tally


def _tally_narrow(
    tally: _Tally, a: torch.Tensor, b: torch.Tensor, truth: torch.Tensor | None, tol: Tolerance, allowance: float
) -> bool:
    """One slice in fp32, in a quarter of the double path's time: False, with nothing counted, unless every element
    is finite in the answer, the reference and the float64 evaluation, and no difference overflows (the double
    path, ``_tally_wide``, then takes the slice). Two fp32 values within a factor 2 of each other differ by an
    exactly representable amount, so near any tolerance's edge the differences are exact; the bounds they are
    held to are rounded once more (relative 6e-8)."""
    # fp32 outputs; half precision keeps the double path, where torch.isclose, as KernelBench's allclose, works in
    # the outputs' own dtype. A float64 evaluation is rounded to fp32 here, as ``exact_record`` rounds the timed
    # and perturbed ones: it moves by half an fp32 ulp at most, far inside every bound.
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        return False
    if truth is not None and truth.dtype not in (torch.float32, torch.float64):
        return False
    diff = (a - b).abs_()
    largest = float(diff.max())  # NaN or Inf where an element is not finite or a difference overflowed
    truth = truth.float() if truth is not None else None
    distance = (a - truth).abs_() if truth is not None else None
    farthest = float(distance.max()) if distance is not None else 0.0
    if not (math.isfinite(largest) and math.isfinite(farthest)):
        return False
    size = b.abs()
    tally.not_close += int((diff > size.mul(tol.rtol).add_(tol.atol)).sum())  # torch.isclose, for finite values
    tally.max_abs = max(tally.max_abs, largest)
    floor = max(tol.atol, torch.finfo(torch.float32).tiny)
    tally.max_rel = max(tally.max_rel, float(diff.div_(size.clamp_min_(floor)).max()))
    if truth is not None and distance is not None:
        limit = truth.abs().mul_(tol.rtol).add_(tol.atol).clamp_min_(allowance)
        tally.beyond += int((distance > limit).sum())
        tally.max_abs_fp64 = max(tally.max_abs_fp64, farthest)
    return True


def _tally_wide(
    tally: _Tally, a: torch.Tensor, b: torch.Tensor, truth: torch.Tensor | None, tol: Tolerance, allowance: float
) -> None:
    """One slice in double, NaN and Inf placement included."""
    floor = max(tol.atol, torch.finfo(torch.float64).tiny)
    finite = torch.isfinite(a) & torch.isfinite(b)
    everywhere = bool(finite.all())
    if not everywhere:  # NaN or Inf can only be misplaced where one of the two is not finite
        tally.nan_misplaced += int((torch.isnan(a) != torch.isnan(b)).sum())
        a_inf, b_inf = torch.isinf(a), torch.isinf(b)
        tally.inf_misplaced += int(((a_inf & (a > 0)) != (b_inf & (b > 0))).sum())
        tally.inf_misplaced += int(((a_inf & (a < 0)) != (b_inf & (b < 0))).sum())
    tally.not_close += int((~torch.isclose(a, b, atol=tol.atol, rtol=tol.rtol, equal_nan=True)).sum())
    a64 = a.double()
    if truth is not None:
        beyond, distance = _beyond_float64(a64, b, truth, tol, allowance)
        tally.beyond += beyond
        tally.max_abs_fp64 = max(tally.max_abs_fp64, distance)
    if not everywhere:
        a64, b = a64[finite], b[finite]
    if a64.numel():
        b64 = b.double()  # the reference itself when it is float64: never changed in place
        diff = (a64 - b64).abs_()
        tally.max_abs = max(tally.max_abs, float(diff.max()))
        tally.max_rel = max(tally.max_rel, float(diff.div_(b64.abs().clamp_min_(floor)).max()))


def compare_tensor(
    new: torch.Tensor, ref: torch.Tensor, tolerance_for: Callable[[str], Tolerance], exact: Exact | None = None
) -> Comparison:
    """One output against the reference's: shape, dtype, exact equality for integers, NaN/Inf placement, then
    values. Without ``exact``, allclose against the fp32 reference (the kernelbench rule); with it, the float64
    rule. The reported errors are against the fp32 reference either way."""
    if new.shape != ref.shape:
        return Comparison(False, f"shape {tuple(new.shape)} != reference {tuple(ref.shape)}")
    if new.dtype != ref.dtype:
        return Comparison(False, f"dtype {new.dtype} != reference {ref.dtype}")
    tol = tolerance_for(str(ref.dtype).removeprefix("torch."))
    if not (ref.is_floating_point() or ref.is_complex()):
        equal = torch.equal(new, ref)
        mismatches = int((new != ref).sum())
        return Comparison(equal, "exact match" if equal else f"{mismatches} elements differ", 0.0, 0.0)
    if exact is not None and exact.tensor.shape != ref.shape:
        exact = None  # cannot be matched element by element: the fp32 reference alone decides
    tally = _tally(new, ref, tol, exact)
    max_abs, max_rel = tally.max_abs, tally.max_rel
    if tally.nan_misplaced:
        return Comparison(False, f"NaN in {tally.nan_misplaced} places where the reference differs", max_abs, max_rel)
    if tally.inf_misplaced:
        return Comparison(False, "Inf placement differs from the reference", max_abs, max_rel)
    outside_fp32 = ""
    if tally.not_close:
        outside_fp32 = (
            f"{tally.not_close} of {ref.numel()} elements outside atol={tol.atol:g} rtol={tol.rtol:g} "
            f"(max abs error {max_abs:.3g})"
        )
    if exact is None:
        return Comparison(not outside_fp32, outside_fp32 or "within tolerance", max_abs, max_rel)
    if tally.beyond:
        reason = (
            f"{tally.beyond} of {ref.numel()} elements outside atol={tol.atol:g} rtol={tol.rtol:g} of the float64 "
            f"evaluation and more than {exact.factor:g} x PyTorch fp32's own error ({exact.fp32_error:.3g}) from it "
            f"(max error {tally.max_abs_fp64:.3g})"
        )
        return Comparison(False, reason, max_abs, max_rel)
    if outside_fp32:  # what let it pass, for the notes: a large E (a reference off float64 by a jump) shows there
        outside_fp32 += f"; PyTorch fp32 itself is up to {exact.fp32_error:.3g} off the float64 evaluation"
    return Comparison(True, "within tolerance (float64 rule)", max_abs, max_rel, outside_fp32=outside_fp32)


def compare_records(
    new: dict[str, Any],
    ref: dict[str, Any],
    tolerance_for: Callable[[str], Tolerance],
    exact: dict[str, Any] | None = None,
    factor: float = 4.0,
) -> Comparison:
    """A solution's outputs of one call against the reference's: with ``exact``, the reference's float64
    evaluation of the same call, by the float64 rule (``factor`` is C); without it, by the kernelbench rule."""
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
        result = compare_tensor(a, b, tolerance_for, _exact_output(exact, index, b, factor))
        if len(ref_tensors) > 1 and not result.ok:
            result.reason = f"output {index}: {result.reason}"
        if len(ref_tensors) > 1 and result.outside_fp32:
            result.outside_fp32 = f"output {index}: {result.outside_fp32}"
        worst = merge(worst, result)
        if not result.ok:
            return worst
    return worst


def _exact_output(exact: dict[str, Any] | None, index: int, ref: torch.Tensor, factor: float) -> Exact | None:
    """Output ``index`` of a float64 evaluation's record, for the float64 rule; None where there is none to match
    against (no record, a non-floating output), and the fp32 reference alone decides."""
    tensors = exact.get("tensors", []) if exact is not None else []
    if index >= len(tensors) or not _floating_pair(tensors[index], ref):
        return None
    errors = exact.get(FP32_ERROR) if exact is not None else None
    error = errors[index] if isinstance(errors, list) and index < len(errors) else fp32_error(ref, tensors[index])
    return None if error is None else Exact(tensors[index], error, factor)


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
        so_far.outside_fp32 or latest.outside_fp32,
    )
