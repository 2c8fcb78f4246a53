"""BatchNorm folding for export: a BN that only post-processes a convolution becomes part of its weights.

Done in torch, in float64, before export, so the ONNX graph holds one Conv where the model had Conv + BN,
and every runtime sees the same folded weights.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

__all__ = ["fold_batchnorm"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def _fold_into(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` into ``conv`` in place: W' = W·γ/√(σ²+ε) per output channel, b' = (b − μ)·γ/√(σ²+ε) + β (float64)."""
    w = conv.weight.double()
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    conv.weight.copy_((w * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))


def fold_batchnorm(model: nn.Module) -> int:
    """Fold BatchNorms fed only by a convolution into it, in place; returns how many were folded.

    A pair is folded only when tracing proves it safe: the BN's input is the conv's output and nothing
    else reads it, each module is called once, and the BN uses running statistics. Folded BNs become
    ``nn.Identity``. Models torch.fx cannot trace are left as they are (their BNs may then reach the graph).
    Only exact Conv / BatchNorm classes take part: a subclass (a weight-standardised conv, say) may use its
    weight in a way that a folded scale would change.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # fx raises many types on untraceable Python; folding is an optimisation only
        return 0
    modules = dict(model.named_modules(remove_duplicate=False))
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    owners = Counter(id(m) for m in modules.values())
    folded = 0
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if type(bn) not in _NORMS or bn.running_mean is None or len(node.args) != 1:
            continue
        src = node.args[0]
        conv = modules.get(src.target) if isinstance(src, torch.fx.Node) and src.op == "call_module" else None
        if type(conv) not in _CONVS or getattr(conv, "transposed", False) or len(src.users) != 1:
            continue
        if calls[src.target] != 1 or calls[node.target] != 1 or owners[id(conv)] != 1 or owners[id(bn)] != 1:
            continue
        if conv.out_channels != bn.num_features:
            continue
        _fold_into(conv, bn)
        parent, _, child = node.target.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        folded += 1
    return folded
