"""Give ModelNew the reference's weights, and later perturb both identically.

Both workers call this: the reference worker on ``Model``, the solution worker on ``Model`` (built only to
read its seeded weights) and ``ModelNew``. Values depend only on the seed, the device and the reference's
initial weights, so the two processes compute the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def named_state(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters then buffers, in registration order, with their names."""
    return [*module.named_parameters(), *module.named_buffers()]


@dataclass
class StateMap:
    """Which tensor of ModelNew stands for which tensor of Model, under the reference's names."""

    mode: str  # by_name | by_position | seeded_only
    targets: dict[str, torch.Tensor] = field(default_factory=dict)  # reference name -> ModelNew tensor

    def copy_in(self, values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, target in self.targets.items():
                if name in values:
                    target.copy_(values[name])


def match_state(reference: nn.Module, candidate: nn.Module) -> StateMap:
    """By name when every reference tensor has a same-named, same-shaped twin; else by position when every
    shape lines up in order; otherwise no mapping (both keep what the shared seed gave them)."""
    ref, new = named_state(reference), named_state(candidate)
    new_by_name = dict(new)
    if ref and all(name in new_by_name and new_by_name[name].shape == t.shape for name, t in ref):
        return StateMap("by_name", {name: new_by_name[name] for name, _ in ref})
    if ref and len(ref) == len(new) and all(a.shape == b.shape for (_, a), (_, b) in zip(ref, new, strict=True)):
        return StateMap("by_position", {name: b for (name, _), (_, b) in zip(ref, new, strict=True)})
    return StateMap("seeded_only")


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
