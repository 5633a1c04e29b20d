"""Give ModelNew the reference's weights, and later perturb both identically.

Both workers call this: the reference worker on ``Model``, the solution worker on ``Model`` (built only to
read its seeded weights) and ``ModelNew``. Values depend only on the seed, the device and the reference's
initial weights, so the two processes compute the same tensors.

Matching (``match_state``) decides which ModelNew tensor stands for each reference parameter or buffer. Only
matched tensors can be given the reference's values, perturbed later, and compared as state, so the judge
holds every unmatched reference tensor against the solution (docs/verdicts.md, "Weights").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

# How ModelNew's tensors were matched: every one by name or by position; every one, some by value or unique
# shape; some reference tensor left unmatched; nothing matched (or nothing to match).
MODES = ("by_name", "by_position", "by_value", "partial", "none")


def named_state(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters then buffers, in registration order, with their names."""
    return [*module.named_parameters(), *module.named_buffers()]


@dataclass
class StateMap:
    """Which tensor of ModelNew stands for which tensor of Model, under the reference's names."""

    mode: str  # one of MODES
    targets: dict[str, torch.Tensor] = field(default_factory=dict)  # reference name -> ModelNew tensor
    unmatched: list[str] = field(default_factory=list)  # reference names no ModelNew tensor stands for

    def copy_in(self, values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, target in self.targets.items():
                if name in values:
                    target.copy_(values[name])


@dataclass(eq=False)  # compared by identity: each ModelNew tensor is taken at most once
class _Entry:
    name: str
    tensor: torch.Tensor
    is_buffer: bool

    @property
    def key(self) -> tuple[torch.Size, bool]:
        # Shape and floating-ness: a float tensor may stand for a float of another precision, never for a counter.
        return self.tensor.shape, self.tensor.is_floating_point()


def _entries(module: nn.Module) -> list[_Entry]:
    return [_Entry(n, t, False) for n, t in module.named_parameters()] + [
        _Entry(n, t, True) for n, t in module.named_buffers()
    ]


def _kind_fits(entry: _Entry, candidate: _Entry, same_kind: bool) -> bool:
    return not same_kind or candidate.is_buffer == entry.is_buffer


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def _by_value(ref: list[_Entry], free: list[_Entry], matched: dict[str, _Entry]) -> None:
    """Seeded construction gives ModelNew the reference's values: an exactly equal tensor is the match. Equal
    candidates are common (BatchNorm's weight and running_var are both ones), so same kind (parameter or
    buffer) first over all reference tensors, then any kind; registration order breaks the remaining ties."""
    for same_kind in (True, False):
        for entry in ref:
            if entry.name in matched:
                continue
            pick = next((c for c in free if _kind_fits(entry, c, same_kind) and _equal(entry.tensor, c.tensor)), None)
            if pick is not None:
                matched[entry.name] = pick
                free.remove(pick)


def _by_unique_shape(ref: list[_Entry], free: list[_Entry], matched: dict[str, _Entry]) -> None:
    """A reference tensor whose shape no other unmatched reference tensor has, and exactly one unmatched
    ModelNew tensor has (one of the same kind, failing that one of any kind): values built another way (a
    parameter drawn first shifts the random stream) still have one place to go."""
    for same_kind in (True, False):
        for entry in ref:
            if entry.name in matched or sum(o.key == entry.key for o in ref if o.name not in matched) != 1:
                continue
            fits = [c for c in free if c.key == entry.key and _kind_fits(entry, c, same_kind)]
            if len(fits) == 1:
                matched[entry.name] = fits[0]
                free.remove(fits[0])


def match_state(reference: nn.Module, candidate: nn.Module) -> StateMap:
    """By name when every reference tensor has a same-named, same-shaped twin; else by position when every
    shape lines up in order; else each reference tensor on its own, by equal value, then by unique shape.
    Each ModelNew tensor stands for at most one reference tensor."""
    ref, new = named_state(reference), named_state(candidate)
    if not ref:
        return StateMap("none")
    new_by_name = dict(new)
    if all(name in new_by_name and new_by_name[name].shape == t.shape for name, t in ref):
        return StateMap("by_name", {name: new_by_name[name] for name, _ in ref})
    if len(ref) == len(new) and all(a.shape == b.shape for (_, a), (_, b) in zip(ref, new, strict=True)):
        return StateMap("by_position", {name: b for (name, _), (_, b) in zip(ref, new, strict=True)})
    ref_entries, free = _entries(reference), _entries(candidate)
    matched: dict[str, _Entry] = {}
    _by_value(ref_entries, free, matched)
    _by_unique_shape(ref_entries, free, matched)
    targets = {name: matched[name].tensor for name, _ in ref if name in matched}
    unmatched = [name for name, _ in ref if name not in matched]
    mode = "none" if not targets else "partial" if unmatched else "by_value"
    return StateMap(mode, targets, unmatched)


def copy_reference_weights(reference: nn.Module, candidate: nn.Module) -> StateMap:
    state = match_state(reference, candidate)
    state.copy_in(dict(named_state(reference)))
    return state


def perturbed_values(reference: nn.Module, seed: int, wanted: bool = True) -> dict[str, torch.Tensor]:
    """New values for every floating parameter and buffer: each scaled by a random factor in [0.5, 1.5] and
    shifted by up to 10 % of its largest magnitude. Signs mostly survive (variances stay positive) while every
    value changes, so a solution that cached anything derived from the weights gives different answers."""
    if not wanted:  # no perturbed trials: spare a full copy of every weight
        return {}
    values = {}
    with torch.no_grad():
        for index, (name, tensor) in enumerate(named_state(reference)):
            if not tensor.is_floating_point():
                continue
            generator = torch.Generator(device=tensor.device).manual_seed(seed + index)
            factor = torch.rand(tensor.shape, generator=generator, device=tensor.device, dtype=tensor.dtype)
            shift = torch.rand(tensor.shape, generator=generator, device=tensor.device, dtype=tensor.dtype)
            magnitude = max(float(tensor.abs().max()) if tensor.numel() else 0.0, 1e-2)
            values[name] = tensor * (0.5 + factor) + 0.1 * magnitude * (2 * shift - 1)
    return values


def buffer_names(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_buffers()]


def snapshot(tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """CPU copies of the named tensors (the reference's buffer names) that ``tensors`` has."""
    return {name: tensors[name].detach().to("cpu", copy=True) for name in names if name in tensors}
