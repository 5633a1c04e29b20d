"""Give ModelNew the reference's weights, so both compute with the same parameters and buffers."""

from __future__ import annotations

import torch
from torch import nn


def _named_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _ordered_state(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def copy_reference_weights(reference: nn.Module, candidate: nn.Module) -> str:
    """Copy by name when every reference tensor has a same-named, same-shaped twin, else by position when
    every shape lines up in order; otherwise both keep what the shared seed gave them.

    Returns how the weights were matched: ``by_name``, ``by_position`` or ``seeded_only``.
    """
    ref_named, new_named = _named_state(reference), _named_state(candidate)
    with torch.no_grad():
        if ref_named and all(
            name in new_named and new_named[name].shape == tensor.shape for name, tensor in ref_named.items()
        ):
            for name, tensor in ref_named.items():
                new_named[name].copy_(tensor)
            return "by_name"
        ref_list, new_list = _ordered_state(reference), _ordered_state(candidate)
        if (
            ref_list
            and len(ref_list) == len(new_list)
            and all(a.shape == b.shape for a, b in zip(ref_list, new_list, strict=True))
        ):
            for source, target in zip(ref_list, new_list, strict=True):
                target.copy_(source)
            return "by_position"
    return "seeded_only"
