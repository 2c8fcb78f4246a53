"""Conv chains for HT-2 and Tucker-1 (the HT-2 seed's methods), as plain ``nn.Conv2d`` sequences.

Same two-half pattern as `tdexport.layers`: ``*_structure(conv, ranks)`` builds the chain with the right
shapes and geometry (weights uninitialised), ``load_*`` writes factors into it. Bias goes on the last conv.

* HT-2: 1×1 I→R1 · kh×1 R1→R13 (stride (sh, 1), padding (ph, 0), dilation (dh, 1)) ·
  1×kw R13→R3 (stride (1, sw), padding (0, pw), dilation (1, dw)) · 1×1 R3→O.
  The vertical conv only shrinks H, so the cost is
  params I·R1 + kh·R1·R13 + kw·R13·R3 + R3·O (+O bias) and
  MACs H·W·I·R1 + H'·W·kh·R1·R13 + H'·W'·kw·R13·R3 + H'·W'·R3·O.
  Splitting zero padding between the two spatial convs is exact: the pointwise first conv maps zero
  padding to zero, and the horizontal conv pads columns of an intermediate that acts column by column.
* Tucker-1: kh×kw I→R (the original stride, padding and dilation) · 1×1 R→O.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .factor.ht2 import HT2Factors, check_ht2_ranks
from .factor.tucker1 import Tucker1Factors
from .layers import _conv, _copy_bias, _padding

__all__ = ["ht2_structure", "load_ht2", "tucker1_structure", "load_tucker1"]


def _check_conv(conv: nn.Module) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"expected an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"grouped conv (groups={conv.groups}) cannot be factored into a dense chain")
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode '{conv.padding_mode}' is not supported (the chain pads with zeros)")


def _weight_shape(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    return conv.out_channels, conv.in_channels, *conv.kernel_size


def ht2_structure(conv: nn.Conv2d, ranks: Sequence[int]) -> nn.Sequential:
    """Four-conv HT-2 chain for ``conv`` at ranks (R1, R13, R3), weights uninitialised.

    Raises:
        ValueError: a grouped conv, a non-zero padding mode, padding with no symmetric integer form, or
            ranks outside 1 ≤ R1 ≤ I, 1 ≤ R3 ≤ O, 1 ≤ R13 ≤ min(R1·kh, R3·kw).
    """
    _check_conv(conv)
    r1, r13, r3 = check_ht2_ranks(_weight_shape(conv), ranks)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, _padding(conv), conv.dilation
    return nn.Sequential(
        _conv(conv.in_channels, r1, (1, 1), like=conv),
        _conv(r1, r13, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), like=conv),
        _conv(r13, r3, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), like=conv),
        _conv(r3, conv.out_channels, (1, 1), bias=conv.bias is not None, like=conv),
    )


def _single_rank(ranks: Sequence[int] | int) -> int:
    if isinstance(ranks, Sequence) and not isinstance(ranks, (str, bytes)):
        if len(ranks) != 1:
            raise ValueError(f"Tucker-1 needs one rank (R,), got {ranks!r}")
        ranks = ranks[0]
    if isinstance(ranks, bool) or not hasattr(ranks, "__index__"):
        raise ValueError(f"Tucker-1 rank must be an integer, got {ranks!r}")
    return int(ranks)


def tucker1_structure(conv: nn.Conv2d, ranks: Sequence[int] | int) -> nn.Sequential:
    """Two-conv Tucker-1 chain for ``conv`` at rank (R,) (or a bare int), weights uninitialised.

    Raises:
        ValueError: a grouped conv, a non-zero padding mode, or R outside [1, min(O, I·kh·kw)].
    """
    _check_conv(conv)
    r = _single_rank(ranks)
    o, i, kh, kw = _weight_shape(conv)
    if not 1 <= r <= min(o, i * kh * kw):
        raise ValueError(f"rank {r} is outside [1, min(O, I·kh·kw) = {min(o, i * kh * kw)}]")
    return nn.Sequential(
        _conv(conv.in_channels, r, conv.kernel_size, stride=conv.stride, padding=_padding(conv),
              dilation=conv.dilation, like=conv),
        _conv(r, conv.out_channels, (1, 1), bias=conv.bias is not None, like=conv),
    )


def _check_fits(seq: nn.Sequential, weights: Sequence[torch.Tensor], what: str) -> None:
    if len(seq) != len(weights):
        raise ValueError(f"{what} chain has {len(seq)} layers, expected {len(weights)}")
    for k, (layer, w) in enumerate(zip(seq, weights, strict=True)):
        if tuple(layer.weight.shape) != tuple(w.shape):
            raise ValueError(f"{what} layer {k} has weight {tuple(layer.weight.shape)}, factors give {tuple(w.shape)}")


@torch.no_grad()
def load_ht2(seq: nn.Sequential, conv: nn.Conv2d, factors: HT2Factors) -> nn.Sequential:
    """Write HT-2 factors into a chain from `ht2_structure`; the original bias goes on the last conv.

    Weights: U1ᵀ (R1, I, 1, 1); G1 (R1, kh, R13) → (R13, R1, kh, 1); G2 (R13, R3, kw) → (R3, R13, 1, kw);
    U3 (O, R3, 1, 1).

    Returns:
        ``seq``, filled.
    """
    if tuple(factors.weight_shape) != tuple(conv.weight.shape):
        raise ValueError(f"factors rebuild a kernel {factors.weight_shape}, the conv has {tuple(conv.weight.shape)}")
    weights = [
        factors.u1.T[:, :, None, None],
        factors.g1.permute(2, 0, 1)[:, :, :, None],
        factors.g2.permute(1, 0, 2)[:, :, None, :],
        factors.u3[:, :, None, None],
    ]
    _check_fits(seq, weights, "HT-2")
    for layer, w in zip(seq, weights, strict=True):
        layer.weight.copy_(w)
    _copy_bias(seq[3], conv)
    return seq


@torch.no_grad()
def load_tucker1(seq: nn.Sequential, conv: nn.Conv2d, factors: Tucker1Factors) -> nn.Sequential:
    """Write Tucker-1 factors into a chain from `tucker1_structure`: core (R, I, kh, kw), then U (O, R, 1, 1).

    Returns:
        ``seq``, filled; the original bias is on the last conv.
    """
    if tuple(factors.core.shape[1:]) != tuple(conv.weight.shape[1:]) or factors.u.shape[0] != conv.out_channels:
        raise ValueError(
            f"factors (core {tuple(factors.core.shape)}, u {tuple(factors.u.shape)}) do not fit a conv kernel "
            f"{tuple(conv.weight.shape)}"
        )
    weights = [factors.core, factors.u[:, :, None, None]]
    _check_fits(seq, weights, "Tucker-1")
    for layer, w in zip(seq, weights, strict=True):
        layer.weight.copy_(w)
    _copy_bias(seq[1], conv)
    return seq
