"""Layer lowering: conv / linear modules ⇄ chains of plain nn.Conv2d / nn.Linear built from factors.

Every factorized layer is an ``nn.Sequential`` of standard layers, so ONNX export and any runtime
need no custom op. Builders come in two halves: ``*_structure(module, ranks)`` makes the chain with
the right shapes (used by `apply_plan` before loading saved weights) and ``load_*`` writes factors
into it. Nothing here touches files.

Layer sequences (stride, padding and dilation always on the spatial layer, bias on the last):

* Tucker-2, k×k conv: 1×1 I→R_in · kh×kw R_in→R_out · 1×1 R_out→O.
* CP (4-layer separable form): 1×1 I→R · depthwise kh×1 (vertical stride/padding/dilation) ·
  depthwise 1×kw (horizontal stride/padding/dilation) · 1×1 R→O. Chosen over the 3-layer form with a
  rank-1 k×k depthwise kernel because it handles non-square kernels and costs kh+kw instead of kh·kw
  MACs per output and channel.
* SVD, 1×1 conv: 1×1 I→r (the original stride/padding/dilation) · 1×1 r→O; Linear: I→r · r→O.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .factor.cp import CPFactors
from .factor.svd import SVDFactors
from .factor.tucker import TuckerFactors

__all__ = [
    "tucker2_structure",
    "cp_structure",
    "svd_structure",
    "load_tucker2",
    "load_cp",
    "load_svd",
    "structure_for",
    "conv_output_hw",
    "int_padding",
    "chain_cost",
    "weight_matrix_of",
]


def _conv(cin: int, cout: int, kernel: tuple[int, int], *, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
          groups: int = 1, bias: bool = False, like: nn.Module) -> nn.Conv2d:
    p = next(like.parameters())
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     bias=bias, device=p.device, dtype=p.dtype)


def int_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """The (ph, pw) zero padding of ``conv`` as integers, or None when no symmetric padding equals it.

    ``padding='valid'`` is (0, 0). ``padding='same'`` (stride 1) pads d·(k − 1) in total per axis; PyTorch
    puts the odd extra element on the bottom/right, which a symmetric integer padding cannot express, so
    an odd total gives None and the layer is kept dense rather than factored into a shifted output.
    """
    if not isinstance(conv.padding, str):
        return int(conv.padding[0]), int(conv.padding[1])
    if conv.padding == "valid":
        return 0, 0
    totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
    if any(t % 2 for t in totals):
        return None
    return totals[0] // 2, totals[1] // 2


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    padding = int_padding(conv)
    if padding is None:
        raise ValueError(f"padding {conv.padding!r} of a {conv.kernel_size} conv has no symmetric integer form")
    return padding


def tucker2_structure(conv: nn.Conv2d, ranks: Sequence[int]) -> nn.Sequential:
    """Three-conv Tucker-2 chain for ``conv`` at ranks (R_out, R_in), weights uninitialised."""
    r_out, r_in = int(ranks[0]), int(ranks[1])
    return nn.Sequential(
        _conv(conv.in_channels, r_in, (1, 1), like=conv),
        _conv(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=_padding(conv),
              dilation=conv.dilation, like=conv),
        _conv(r_out, conv.out_channels, (1, 1), bias=conv.bias is not None, like=conv),
    )


def cp_structure(conv: nn.Conv2d, ranks: Sequence[int]) -> nn.Sequential:
    """Four-conv separable CP chain for ``conv`` at rank (R,), weights uninitialised."""
    r = int(ranks[0])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, _padding(conv), conv.dilation
    return nn.Sequential(
        _conv(conv.in_channels, r, (1, 1), like=conv),
        _conv(r, r, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=r, like=conv),
        _conv(r, r, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=r, like=conv),
        _conv(r, conv.out_channels, (1, 1), bias=conv.bias is not None, like=conv),
    )


def svd_structure(layer: nn.Module, ranks: Sequence[int]) -> nn.Sequential:
    """Two-layer SVD chain for a 1×1 conv or a Linear at rank (r,), weights uninitialised."""
    r = int(ranks[0])
    if isinstance(layer, nn.Linear):
        p = layer.weight
        return nn.Sequential(
            nn.Linear(layer.in_features, r, bias=False, device=p.device, dtype=p.dtype),
            nn.Linear(r, layer.out_features, bias=layer.bias is not None, device=p.device, dtype=p.dtype),
        )
    return nn.Sequential(
        _conv(layer.in_channels, r, (1, 1), stride=layer.stride, padding=_padding(layer),
              dilation=layer.dilation, like=layer),
        _conv(r, layer.out_channels, (1, 1), bias=layer.bias is not None, like=layer),
    )


# TT in TDC's "special" form (O, kh·kw, I) has exactly the Tucker-2 chain; only its factors differ.
_STRUCTURES = {"tucker2": tucker2_structure, "tt": tucker2_structure, "cp": cp_structure, "svd": svd_structure}


def structure_for(method: str, layer: nn.Module, ranks: Sequence[int], *,
                  modes: Sequence[Sequence[int]] | None = None) -> nn.Sequential:
    """Empty factorized chain for ``layer`` by method name (one of `tdexport.methods.METHODS`).

    Args:
        method: ``tucker2``, ``tt``, ``cp``, ``svd``, ``ht2``, ``tucker1``, ``ttg`` or ``reorder``.
        layer: the dense Conv2d / Linear it replaces.
        ranks: the method's ranks (see `tdexport.methods`).
        modes: general TT only: [[i_1…i_n], [o_1…o_m]].

    Returns:
        An ``nn.Sequential``; general TT and reorder wrap their one module so every chain indexes alike.
    """
    if method in ("ht2", "tucker1"):
        from . import layers_extra  # it builds on this module's helpers

        return getattr(layers_extra, f"{method}_structure")(layer, ranks)
    if method == "ttg":
        from .layers_tt import tt_general_structure

        if modes is None:
            raise ValueError("general TT needs the channel modes [[i_1, ...], [o_1, ...]]")
        return nn.Sequential(tt_general_structure(layer, list(modes[0]), list(modes[1]), list(ranks)))
    if method == "reorder":
        from .layers_reorder import reorder_structure

        return nn.Sequential(reorder_structure(layer, ranks))
    try:
        return _STRUCTURES[method](layer, ranks)
    except KeyError:
        raise ValueError(f"unknown factorization method '{method}'") from None


@torch.no_grad()
def _copy_bias(last: nn.Module, layer: nn.Module) -> None:
    if layer.bias is not None:
        last.bias.copy_(layer.bias)


@torch.no_grad()
def load_tucker2(seq: nn.Sequential, conv: nn.Conv2d, f: TuckerFactors) -> nn.Sequential:
    """Write Tucker-2 factors (core (R_out, R_in, kh, kw), U_out (O, R_out), U_in (I, R_in)) into ``seq``."""
    u_out, u_in = f.factors
    seq[0].weight.copy_(u_in.T[:, :, None, None])
    seq[1].weight.copy_(f.core)
    seq[2].weight.copy_(u_out[:, :, None, None])
    _copy_bias(seq[2], conv)
    return seq


@torch.no_grad()
def load_cp(seq: nn.Sequential, conv: nn.Conv2d, f: CPFactors) -> nn.Sequential:
    """Write CP factors (O, R), (I, R), (kh, R), (kw, R) into ``seq``; λ is folded into the output factor."""
    a_out, a_in, a_h, a_w = f.absorb_weights(0)
    seq[0].weight.copy_(a_in.T[:, :, None, None])
    seq[1].weight.copy_(a_h.T[:, None, :, None])
    seq[2].weight.copy_(a_w.T[:, None, None, :])
    seq[3].weight.copy_(a_out[:, :, None, None])
    _copy_bias(seq[3], conv)
    return seq


@torch.no_grad()
def load_svd(seq: nn.Sequential, layer: nn.Module, f: SVDFactors) -> nn.Sequential:
    """Write SVD factors into ``seq``: first layer diag(s)·Vh (r, I), second U (O, r)."""
    first, second = f.s[:, None] * f.vh, f.u
    if isinstance(layer, nn.Conv2d):
        first, second = first[:, :, None, None], second[:, :, None, None]
    seq[0].weight.copy_(first)
    seq[1].weight.copy_(second)
    _copy_bias(seq[1], layer)
    return seq


def conv_output_hw(conv: nn.Conv2d, hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial output size of ``conv`` for an input of size ``hw`` (PyTorch's floor formula).

    String padding counts as PyTorch applies it: ``'same'`` keeps ``hw`` (it requires stride 1),
    ``'valid'`` pads nothing.
    """
    if conv.padding == "same":
        return int(hw[0]), int(hw[1])
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    return tuple(
        (hw[i] + 2 * padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1
        for i in range(2)
    )


def chain_cost(layers: Sequence[nn.Module], *, in_hw: tuple[int, int] | None = None,
               tokens: int = 1) -> tuple[int, int]:
    """Parameters and multiply-accumulates of a chain of Conv2d / Linear layers, for one sample.

    Args:
        layers: Conv2d and Linear modules applied in order (a single layer or an ``nn.Sequential``).
        in_hw: input (H, W) of the first conv; required when the chain has convs.
        tokens: how many rows a Linear sees per sample (1 for a classifier, N for a transformer).

    Returns:
        (params, macs): weights plus biases, and MACs = Σ H'·W'·(C_in/groups)·kh·kw·C_out over convs
        plus tokens·I·O over linears; a module with a ``layer_cost(in_hw=, tokens=)`` method (general TT,
        reordered layers) gives its own MACs and ``output_hw(hw)``.
    """
    params = macs = 0
    hw = in_hw
    for m in layers:
        params += sum(p.numel() for p in m.parameters())
        own = getattr(m, "layer_cost", None)
        if own is not None:  # general-TT and reordered layers count themselves (not a plain conv chain)
            macs += own(in_hw=hw, tokens=tokens)
            hw = m.output_hw(hw) if hw is not None else None
        elif isinstance(m, nn.Conv2d):
            if hw is None:
                raise ValueError("chain_cost needs in_hw for a chain with convolutions")
            hw = conv_output_hw(m, hw)
            kh, kw = m.kernel_size
            macs += hw[0] * hw[1] * (m.in_channels // m.groups) * kh * kw * m.out_channels
        elif isinstance(m, nn.Linear):
            macs += tokens * m.in_features * m.out_features
        else:
            raise ValueError(f"chain_cost handles Conv2d and Linear, not {type(m).__name__}")
    return params, macs


def weight_matrix_of(weight: Tensor) -> Tensor:
    """The (O, I) matrix of a Linear weight (O, I) or a 1×1 conv kernel (O, I, 1, 1)."""
    return weight.detach().reshape(weight.shape[0], -1)
