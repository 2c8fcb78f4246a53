"""General-TT layers: a conv or Linear run as a chain of 1×1 convs / matmuls joined by reshapes only.

The cores of `tdexport.factor.tt_general` (mode order i_1…i_n, [kh·kw,] o_1…o_m) are applied left to
right. No transposition is ever needed, because each step contracts the two leading axes of a row-major
tensor and produces its result in front of the remaining ones:

* input core k (r_{k-1}, i_k, r_k): view the activation (B, r_{k-1}, i_k, i_{k+1}…i_n, H, W) as
  (B, r_{k-1}·i_k, (i_{k+1}…i_n)·H, W) and apply a 1×1 conv r_{k-1}·i_k → r_k (the remaining input
  modes ride along in the height axis);
* spatial core (r_n, kh·kw, r_{n+1}): one kh×kw conv r_n → r_{n+1} with the layer's stride, padding,
  dilation and padding mode (padding commutes with the per-pixel channel maps before it);
* output core k (r, o_k, r'): a 1×1 conv r → o_k·r', then view (B·o_1…o_{k-1}, o_k·r', H', W') as
  (B·o_1…o_k, r', H', W'): the finished output modes move into the batch axis, still row-major;
* finally (B·o_1…o_{m-1}, o_m, H', W') is viewed as (B, O, H', W') and the bias is added.

A Linear does the same with matmuls on (B, r_{k-1}·i_k, rest) and (B·o_1…o_{k-1}, r) and no spatial
core. The modules therefore use only reshape, conv2d, matmul and add, export as standard ONNX
(Reshape / Conv / MatMul / Add) and trace with torch.fx. Their cost is `tt_general_cost`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .factor.tt_general import TTGeneralFactors, clamp_tt_ranks, resolve_modes, tt_mode_sizes
from .layers import conv_output_hw, int_padding

__all__ = [
    "TTGeneralConv2d",
    "TTGeneralLinear",
    "load_tt_general",
    "tt_general_cost",
    "tt_general_structure",
]


class TTGeneralConv2d(nn.Module):
    """A conv layer (O, I, kh, kw) in general-TT form: n input 1×1 convs, one kh×kw conv, m output 1×1 convs.

    Attributes:
        shape_in, shape_out: the channel mode sizes (∏ = I, ∏ = O).
        ranks: the inner TT ranks (n + m of them).
        in_convs: 1×1 convs r_{k-1}·i_k → r_k (no bias).
        spatial: the kh×kw conv r_n → r_{n+1} with the original stride/padding/dilation/padding mode.
        out_convs: 1×1 convs r → o_k·r' (no bias).
        bias: the original bias (O,), or None.
    """

    def __init__(self, in_channels: int, out_channels: int, shape_in: Sequence[int], shape_out: Sequence[int],
                 ranks: Sequence[int], kernel_size: tuple[int, int], *, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), padding_mode: str = "zeros", bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.shape_in, self.shape_out = tuple(int(s) for s in shape_in), tuple(int(s) for s in shape_out)
        self.ranks = tuple(int(r) for r in ranks)
        n, m = len(self.shape_in), len(self.shape_out)
        if math.prod(self.shape_in) != in_channels or math.prod(self.shape_out) != out_channels:
            raise ValueError(f"modes {self.shape_in}/{self.shape_out} do not multiply to {in_channels}/{out_channels}")
        if len(self.ranks) != n + m:
            raise ValueError(f"{n} input and {m} output modes plus a spatial one need {n + m} ranks, got {ranks}")
        kw = dict(bias=False, device=device, dtype=dtype)
        full = (1, *self.ranks, 1)
        self.in_convs = nn.ModuleList(
            nn.Conv2d(full[k] * self.shape_in[k], full[k + 1], 1, **kw) for k in range(n))
        self.spatial = nn.Conv2d(full[n], full[n + 1], kernel_size, stride=stride, padding=padding,
                                 dilation=dilation, padding_mode=padding_mode, **kw)
        self.out_convs = nn.ModuleList(
            nn.Conv2d(full[n + 1 + k], self.shape_out[k] * full[n + 2 + k], 1, **kw) for k in range(m))
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """(B, I, H, W) → (B, O, H', W')."""
        b, w = x.size(0), x.size(3)
        z = x
        for conv in self.in_convs:
            z = conv(z.reshape(b, conv.in_channels, -1, w))  # rest of the input modes folded into H
        z = self.spatial(z.reshape(b, self.spatial.in_channels, -1, w))
        h2, w2 = z.size(2), z.size(3)
        for conv in self.out_convs:
            z = conv(z.reshape(-1, conv.in_channels, h2, w2))  # finished output modes folded into the batch
        y = z.reshape(b, self.out_channels, h2, w2)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y

    def layer_cost(self, *, in_hw: tuple[int, int] | None = None, tokens: int = 1) -> int:
        """MACs per sample at input size ``in_hw`` (see `tt_general_cost`); ``tokens`` is unused."""
        return tt_general_cost(self, in_hw=in_hw)[1]

    def output_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Output (H', W') for an input of size ``hw``."""
        return conv_output_hw(self.spatial, hw)


class TTGeneralLinear(nn.Module):
    """A Linear layer (O, I) in general-TT form: n input matmuls then m output matmuls.

    Attributes:
        shape_in, shape_out: the feature mode sizes (∏ = I, ∏ = O).
        ranks: the inner TT ranks (n + m − 1 of them).
        in_weights: matrices (r_k, r_{k-1}·i_k), applied from the left.
        out_weights: matrices (r, o_k·r'), applied from the right.
        bias: the original bias (O,), or None.
    """

    def __init__(self, in_features: int, out_features: int, shape_in: Sequence[int], shape_out: Sequence[int],
                 ranks: Sequence[int], *, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.shape_in, self.shape_out = tuple(int(s) for s in shape_in), tuple(int(s) for s in shape_out)
        self.ranks = tuple(int(r) for r in ranks)
        n, m = len(self.shape_in), len(self.shape_out)
        if math.prod(self.shape_in) != in_features or math.prod(self.shape_out) != out_features:
            raise ValueError(f"modes {self.shape_in}/{self.shape_out} do not multiply to {in_features}/{out_features}")
        if len(self.ranks) != n + m - 1:
            raise ValueError(f"{n} input and {m} output modes need {n + m - 1} ranks, got {ranks}")
        kw = dict(device=device, dtype=dtype)
        full = (1, *self.ranks, 1)
        self.in_weights = nn.ParameterList(
            nn.Parameter(torch.empty(full[k + 1], full[k] * self.shape_in[k], **kw)) for k in range(n))
        self.out_weights = nn.ParameterList(
            nn.Parameter(torch.empty(full[n + k], self.shape_out[k] * full[n + k + 1], **kw)) for k in range(m))
        for p in (*self.in_weights, *self.out_weights):
            nn.init.normal_(p, std=p.shape[-1] ** -0.5)
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        # Static (contracted, remaining) sizes of each input step and the bond entering each output step, so
        # the traced graph holds constants instead of parameter-shape lookups.
        self._in_steps = tuple((full[k] * self.shape_in[k], math.prod(self.shape_in[k + 1:])) for k in range(n))
        self._out_bonds = tuple(full[n + k] for k in range(m))

    def forward(self, x: Tensor) -> Tensor:
        """(…, I) → (…, O)."""
        out_shape = x.shape[:-1] + (self.out_features,)
        z = x.reshape(-1, self.in_features)
        for wgt, (contracted, rest) in zip(self.in_weights, self._in_steps, strict=True):
            z = torch.matmul(wgt, z.reshape(-1, contracted, rest))  # (B, r_k, rest)
        for wgt, bond in zip(self.out_weights, self._out_bonds, strict=True):
            z = torch.matmul(z.reshape(-1, bond), wgt)  # (B·o_1…o_{k-1}, o_k·r')
        y = z.reshape(out_shape)
        if self.bias is not None:
            y = y + self.bias
        return y

    def layer_cost(self, *, in_hw: tuple[int, int] | None = None, tokens: int = 1) -> int:
        """MACs per sample for ``tokens`` rows (see `tt_general_cost`)."""
        return tt_general_cost(self, tokens=tokens)[1]

    def output_hw(self, hw: tuple[int, int] | None) -> tuple[int, int] | None:
        """A Linear leaves the spatial size alone."""
        return hw


def tt_general_structure(layer: nn.Module, shape_in: int | Sequence[int], shape_out: int | Sequence[int],
                         ranks: int | Sequence[int]) -> TTGeneralConv2d | TTGeneralLinear:
    """Empty general-TT module for ``layer`` (nn.Conv2d with groups=1, or nn.Linear).

    Mode sizes and ranks are resolved exactly as `tt_general` resolves them (same `balanced_split`, same
    clamping), so factors computed for the same arguments always fit.

    Args:
        layer: the dense layer to replace.
        shape_in: mode sizes of I, or their number for `balanced_split`.
        shape_out: mode sizes of O, or their number for `balanced_split`.
        ranks: inner ranks per bond, or one int as the maximum rank.
    """
    p = layer.weight
    if isinstance(layer, nn.Linear):
        s_in, s_out = resolve_modes(layer.in_features, shape_in), resolve_modes(layer.out_features, shape_out)
        _, used = clamp_tt_ranks(tt_mode_sizes(s_in, s_out, None), ranks)
        return TTGeneralLinear(layer.in_features, layer.out_features, s_in, s_out, used,
                               bias=layer.bias is not None, device=p.device, dtype=p.dtype)
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(f"general TT replaces nn.Conv2d or nn.Linear, not {type(layer).__name__}")
    if layer.groups != 1:
        raise ValueError(f"general TT needs a dense conv (groups=1), got groups={layer.groups}")
    padding = int_padding(layer)
    if padding is None:
        raise ValueError(f"padding {layer.padding!r} of a {layer.kernel_size} conv has no symmetric integer form")
    s_in, s_out = resolve_modes(layer.in_channels, shape_in), resolve_modes(layer.out_channels, shape_out)
    _, used = clamp_tt_ranks(tt_mode_sizes(s_in, s_out, layer.kernel_size), ranks)
    return TTGeneralConv2d(layer.in_channels, layer.out_channels, s_in, s_out, used, layer.kernel_size,
                           stride=layer.stride, padding=padding, dilation=layer.dilation,
                           padding_mode=layer.padding_mode, bias=layer.bias is not None,
                           device=p.device, dtype=p.dtype)


@torch.no_grad()
def load_tt_general(module: TTGeneralConv2d | TTGeneralLinear, layer: nn.Module,
                    f: TTGeneralFactors) -> TTGeneralConv2d | TTGeneralLinear:
    """Write general-TT cores (and ``layer``'s bias) into a module from `tt_general_structure`.

    Raises:
        ValueError: the factors' modes or ranks differ from the module's.
    """
    if (f.shape_in, f.shape_out, f.ranks) != (module.shape_in, module.shape_out, module.ranks):
        raise ValueError(f"factors (modes {f.shape_in}/{f.shape_out}, ranks {f.ranks}) do not fit the module "
                         f"(modes {module.shape_in}/{module.shape_out}, ranks {module.ranks})")
    n = len(f.shape_in)
    cores = f.cores
    if isinstance(module, TTGeneralConv2d):
        if f.kernel != tuple(module.spatial.kernel_size):
            raise ValueError(f"factors of a {f.kernel} kernel do not fit a {module.spatial.kernel_size} conv")
        for conv, core in zip(module.in_convs, cores[:n], strict=True):
            conv.weight.copy_(core.reshape(-1, core.shape[2]).T[:, :, None, None])
        sp = cores[n]  # (r_n, kh·kw, r_{n+1}) → (r_{n+1}, r_n, kh, kw)
        module.spatial.weight.copy_(sp.reshape(sp.shape[0], *f.kernel, sp.shape[2]).permute(3, 0, 1, 2))
        for conv, core in zip(module.out_convs, cores[n + 1:], strict=True):
            conv.weight.copy_(core.reshape(core.shape[0], -1).T[:, :, None, None])
    else:
        if f.kernel is not None:
            raise ValueError("conv factors do not fit a Linear")
        for wgt, core in zip(module.in_weights, cores[:n], strict=True):
            wgt.copy_(core.reshape(-1, core.shape[2]).T)
        for wgt, core in zip(module.out_weights, cores[n:], strict=True):
            wgt.copy_(core.reshape(core.shape[0], -1))
    if module.bias is not None:
        if layer.bias is None:
            raise ValueError("the module has a bias but the layer does not")
        module.bias.copy_(layer.bias)
    return module


def tt_general_cost(module: TTGeneralConv2d | TTGeneralLinear, *, in_hw: tuple[int, int] | None = None,
                    tokens: int = 1) -> tuple[int, int]:
    """Parameters and multiply-accumulates of a general-TT module, for one sample.

    Args:
        module: from `tt_general_structure`.
        in_hw: input (H, W); required for a conv.
        tokens: rows a Linear sees per sample.

    Returns:
        (params, macs). Params are all elements of the module (cores and bias). MACs, with bonds
        r_0 = r_{d} = 1 and H'×W' the output size:
        conv   Σ_k H·W·(i_{k+1}…i_n)·r_{k-1}·i_k·r_k + H'·W'·r_n·kh·kw·r_{n+1}
               + Σ_k H'·W'·(o_1…o_{k-1})·r_{n+k}·o_k·r_{n+k+1};
        linear tokens·[Σ_k (i_{k+1}…i_n)·r_{k-1}·i_k·r_k + Σ_k (o_1…o_{k-1})·r_{n+k-1}·o_k·r_{n+k}].
        The bias adds are not counted, as in `tdexport.layers.chain_cost`.
    """
    params = sum(p.numel() for p in module.parameters())
    n, m = len(module.shape_in), len(module.shape_out)
    full = (1, *module.ranks, 1)
    rest_in = [math.prod(module.shape_in[k + 1:]) for k in range(n)]
    done_out = [math.prod(module.shape_out[:k]) for k in range(m)]
    if isinstance(module, TTGeneralConv2d):
        if in_hw is None:
            raise ValueError("tt_general_cost needs in_hw for a conv")
        h, w = in_hw
        ho, wo = conv_output_hw(module.spatial, in_hw)
        kh, kw = module.spatial.kernel_size
        macs = sum(h * w * rest_in[k] * full[k] * module.shape_in[k] * full[k + 1] for k in range(n))
        macs += ho * wo * full[n] * kh * kw * full[n + 1]
        macs += sum(ho * wo * done_out[k] * full[n + 1 + k] * module.shape_out[k] * full[n + 2 + k]
                    for k in range(m))
        return params, int(macs)
    if not isinstance(module, TTGeneralLinear):
        raise ValueError(f"tt_general_cost handles TTGeneralConv2d and TTGeneralLinear, not {type(module).__name__}")
    macs = sum(rest_in[k] * full[k] * module.shape_in[k] * full[k + 1] for k in range(n))
    macs += sum(done_out[k] * full[n + k] * module.shape_out[k] * full[n + k + 1] for k in range(m))
    return params, int(tokens * macs)
