"""Where each Conv2d / Linear runs in a forward pass (`LayerSite`, `profile_layers`) and what a chain costs there.

Shared by the planner, the budget allocator and the runtime-aware decisions; nothing here factorizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import layers as L
from .plan import module_aliases

__all__ = ["LayerSite", "profile_layers", "site_cost"]


@dataclass
class LayerSite:
    """Where a Conv2d / Linear sits in a forward pass.

    Attributes:
        name: its first dotted name.
        module: the layer.
        in_hw: input (H, W) of a conv at its first call; None for Linear.
        tokens: rows a Linear sees per sample at its first call (1 for a classifier).
        calls: how many times one forward pass runs it.
        aliases: every dotted name it is registered under (weight sharing gives more than one).
        call_inputs: (in_hw, tokens) of every call, so a layer reused at another resolution is costed right.
    """

    name: str
    module: nn.Module
    in_hw: tuple[int, int] | None
    tokens: int
    calls: int = 1
    aliases: tuple[str, ...] = ()
    call_inputs: list[tuple[tuple[int, int] | None, int]] = field(default_factory=list)


def profile_layers(model: nn.Module, input_shape: Sequence[int]) -> list[LayerSite]:
    """Run one sample of shape (C, H, W) through ``model`` and record every Conv2d / Linear it executes.

    Returns:
        Sites in execution order (layers never executed, e.g. auxiliary heads in eval, are absent).
    """
    sites: dict[int, LayerSite] = {}
    aliases = module_aliases(model)
    hooks = []

    def record(module: nn.Module, inputs: tuple, _out: Any) -> None:
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            call = ((int(x.shape[-2]), int(x.shape[-1])), 1)
        else:
            call = (None, int(x.numel() // x.shape[-1]))
        site = sites.get(id(module))
        if site is None:
            names = tuple(aliases[id(module)])
            site = sites[id(module)] = LayerSite(names[0], module, call[0], call[1], 0, names)
        site.calls += 1
        site.call_inputs.append(call)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(record))
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(sites.values())


def site_cost(site: LayerSite, chain: Sequence[nn.Module]) -> tuple[int, int]:
    """(params, MACs summed over every call of the site) of ``chain`` standing in for the site's layer."""
    params, _ = L.chain_cost(chain, in_hw=site.in_hw, tokens=site.tokens)
    calls = site.call_inputs or [(site.in_hw, site.tokens)]
    macs = sum(L.chain_cost(chain, in_hw=hw, tokens=tokens)[1] for hw, tokens in calls)
    return params, macs
