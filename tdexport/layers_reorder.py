"""Trainable conv / Linear layers whose weight is stored as reordered-row DCT coefficients.

What is stored (see `tdexport.factor.reorder`): the dense weight (N elements) is flattened, zero-padded to
g·n (n = ⌈N/g⌉) and viewed as g rows of n; the columns are put in a greedy nearest-neighbour order so every
row varies slowly, and only the lowest t orthonormal DCT-II frequencies of each reordered row are kept. A
module here holds

* ``coefficients`` (g, t): the trainable parameter (plus the original ``bias``, or None);
* ``permutation`` int64 (n,): a persistent buffer, reordered column k is original column ``permutation[k]``.

Why forward rebuilds the weight: the coefficients are not a factorisation of the layer's linear map (no
chain of smaller layers computes it), so every forward zero-pads the coefficients to n, runs the inverse
orthonormal DCT (through a length-n FFT, O(g·n log n), differentiable), undoes the permutation with one
gather and drops the padding; the dense weight then goes through ``F.conv2d`` / ``F.linear``. Fine-tuning
therefore trains the kept frequencies only, and the stored model stays g·t values plus the index.

Why export folds back (`fold_reordered`, ``to_dense``): reordering saves storage, not compute. The layer's
MACs are those of the dense layer (`layer_cost` says so), and the rebuild is FFT, complex arithmetic and a
gather that ONNX runtimes handle poorly or not at all, so at export time each module is replaced by a plain
``nn.Conv2d`` / ``nn.Linear`` holding the rebuilt weight.

Numerics: the rebuild runs in the coefficients' dtype (float32 or float64; lower precisions are promoted to
float32 for the FFT and the weight is cast back), and agrees with the float64 `reorder_reconstruct`
to float32 rounding (the FFT's error grows only like log n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .factor.reorder import ReorderFactors
from .layers import conv_output_hw

__all__ = [
    "ReorderedConv2d",
    "ReorderedLinear",
    "fold_reordered",
    "load_reorder",
    "reorder_ranks",
    "reorder_structure",
]


def _kept(n: int, ratio: float) -> int:
    # Same rule as reorder_compress: the slack keeps ratio = k/n from rounding up to k + 1.
    return min(n, max(1, math.ceil(float(ratio) * n - 1e-9)))


def reorder_ranks(weight_numel: int, groups: int, ratio: float) -> list[int]:
    """Ranks [g, t] that `reorder_compress` uses for a weight of N = ``weight_numel`` elements.

    Args:
        weight_numel: N ≥ 1.
        groups: g, rows of the reshaped weight, 1 ≤ g ≤ N.
        ratio: kept fraction of each row's coefficients, in (0, 1].

    Returns:
        [g, t] with n = ⌈N/g⌉ and t = min(n, max(1, ⌈ratio·n − 1e-9⌉)).

    Raises:
        ValueError: N, g or ratio out of range.
    """
    if isinstance(weight_numel, bool) or not isinstance(weight_numel, int) or weight_numel < 1:
        raise ValueError(f"weight_numel must be a positive integer, got {weight_numel!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= weight_numel:
        raise ValueError(f"groups must be an integer in [1, {weight_numel}], got {groups!r}")
    if isinstance(ratio, bool) or not (isinstance(ratio, (int, float)) and 0.0 < float(ratio) <= 1.0):
        raise ValueError(f"ratio (kept fraction of coefficients) must be in (0, 1], got {ratio!r}")
    return [groups, _kept(-(-weight_numel // groups), ratio)]


def _interleave_index(n: int, device) -> Tensor:
    """Index (n,) with x = v[idx] for the inverse of Makhoul's order: x_{2j} = v_j, x_{2j+1} = v_{n−1−j}."""
    m = torch.arange(n, device=device)
    half = m // 2
    return torch.where(m % 2 == 0, half, n - 1 - half)


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _rebuild(coefficients: Tensor, permutation: Tensor, n: int, shape: tuple[int, ...]) -> Tensor:
    """Dense weight of ``shape`` from coefficients (g, t), differentiable in the coefficients.

    Same maths as `reorder_reconstruct`, without in-place writes and in the coefficients' dtype: the
    orthonormal DCT-III of the zero-padded rows via one length-n inverse FFT, then one gather that both
    un-interleaves Makhoul's sequence and undoes the permutation.
    """
    dtype = coefficients.dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    device = coefficients.device
    t = coefficients.shape[1]
    c = F.pad(coefficients.to(work), (0, n - t))
    scale = torch.full((n,), math.sqrt(n / 2.0), dtype=work, device=device)
    scale[0] = math.sqrt(float(n))
    y = c * scale  # unnormalised DCT-II values Y_k
    y_rev = torch.cat([torch.zeros_like(y[:, :1]), y[:, 1:].flip(-1)], dim=-1)  # Y_{n−k}, Y_n = 0
    # The half-sample twiddle e^{iπk/2n} in float64, rounded once to the working precision.
    k = torch.arange(n, dtype=torch.float64, device=device)
    shift = torch.polar(torch.ones_like(k), math.pi * k / (2 * n)).to(_COMPLEX[work])
    v = torch.fft.ifft(torch.complex(y, -y_rev) * shift).real
    # rows[:, perm[k]] = ordered[:, k]  ⇔  rows = ordered[:, argsort(perm)]; fused with the un-interleave.
    index = _interleave_index(n, device)[torch.argsort(permutation.to(device))]
    rows = v.index_select(1, index)
    return rows.reshape(-1)[: math.prod(shape)].reshape(shape).to(dtype)


class _Reordered(nn.Module):
    """Shared state of the reordered layers: coefficients (g, t), permutation (n,), bias, the weight's shape."""

    def __init__(self, weight_shape: Sequence[int], rows: int, kept: int, *, bias_features: int | None,
                 device=None, dtype=None):
        super().__init__()
        self.weight_shape = tuple(int(s) for s in weight_shape)
        numel = math.prod(self.weight_shape)
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= numel:
            raise ValueError(f"groups g must be an integer in [1, N = {numel}], got {rows!r}")
        n = -(-numel // rows)
        if isinstance(kept, bool) or not isinstance(kept, int) or not 1 <= kept <= n:
            raise ValueError(f"kept coefficients t must be an integer in [1, n = ⌈N/g⌉ = {n}], got {kept!r}")
        self.rows, self.kept, self.n_cols = rows, kept, n
        self.coefficients = nn.Parameter(torch.zeros(rows, kept, device=device, dtype=dtype))
        self.register_buffer("permutation", torch.arange(n, dtype=torch.int64, device=device))
        if bias_features is None:
            self.bias = None
        else:
            self.bias = nn.Parameter(torch.zeros(bias_features, device=device, dtype=dtype))

    @property
    def numel(self) -> int:
        """N, elements of the dense weight."""
        return math.prod(self.weight_shape)

    def dense_weight(self) -> Tensor:
        """The dense weight (``weight_shape``), rebuilt differentiably from ``coefficients``."""
        return _rebuild(self.coefficients, self.permutation, self.n_cols, self.weight_shape)

    def factors(self) -> ReorderFactors:
        """A detached copy of the stored weight as `ReorderFactors` (for `reorder_reconstruct`)."""
        return ReorderFactors(coefficients=self.coefficients.detach().clone(),
                              permutation=self.permutation.detach().clone(), shape=self.weight_shape,
                              n_cols=self.n_cols)

    def storage_bits(self, value_bits: int = 32, index_bits: int | None = None) -> int:
        """Bits to store the weight: g·t·value_bits + n·index_bits (the bias is not counted).

        ``index_bits`` defaults to ⌈log₂ n⌉ (at least 1), bit-packed. Divided by N·value_bits this is
        exactly `tdexport.factor.reorder.storage_ratio` of the same factors.
        """
        if value_bits < 1 or (index_bits is not None and index_bits < 1):
            raise ValueError(f"bit widths must be ≥ 1, got value_bits={value_bits}, index_bits={index_bits}")
        bits = index_bits if index_bits is not None else max(1, math.ceil(math.log2(self.n_cols)))
        return int(self.rows * self.kept * value_bits + self.n_cols * bits)

    def _dense_bias(self, like: nn.Module) -> None:
        with torch.no_grad():
            like.weight.copy_(self.dense_weight())
            if self.bias is not None:
                like.bias.copy_(self.bias)
        like.weight.requires_grad_(self.coefficients.requires_grad)
        like.train(self.training)

    def extra_repr(self) -> str:
        return (f"weight_shape={self.weight_shape}, g={self.rows}, t={self.kept}, n={self.n_cols}, "
                f"bias={self.bias is not None}")


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ReorderedConv2d(_Reordered):
    """A conv (O, I/groups, kh, kw) stored as reordered-row DCT coefficients; forward is ``F.conv2d``.

    Any geometry of ``nn.Conv2d`` is kept (stride, padding incl. ``'same'``/``'valid'``, dilation, conv
    ``groups``, ``padding_mode``); the reorder groups are called ``rows`` (g) so ``groups`` keeps its
    ``nn.Conv2d`` meaning.

    Attributes:
        coefficients: (g, t) trainable low DCT frequencies.
        permutation: int64 (n,) persistent buffer.
        bias: (O,) or None.
        weight_shape: (O, I/groups, kh, kw).
        rows, kept, n_cols: g, t and n = ⌈N/g⌉.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], rows: int, kept: int, *,
                 stride=(1, 1), padding: tuple[int, int] | str = (0, 0), dilation=(1, 1), groups: int = 1,
                 padding_mode: str = "zeros", bias: bool = True, device=None, dtype=None):
        kernel = _pair(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}→{out_channels} are not divisible by groups={groups}")
        super().__init__((out_channels, in_channels // groups, *kernel), rows, kept,
                         bias_features=out_channels if bias else None, device=device, dtype=dtype)
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), kernel
        self.stride, self.dilation, self.groups = _pair(stride), _pair(dilation), int(groups)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.padding_mode = padding_mode
        # Explicit (left, right, top, bottom) padding for non-zero padding modes, as nn.Conv2d computes it.
        if padding == "same":
            pads = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size), strict=True):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            self._explicit_padding = tuple(pads)
        elif padding == "valid":
            self._explicit_padding = (0, 0, 0, 0)
        else:
            ph, pw = self.padding
            self._explicit_padding = (pw, pw, ph, ph)

    def forward(self, x: Tensor) -> Tensor:
        """(B, I, H, W) → (B, O, H', W'), with the weight rebuilt from the coefficients."""
        weight = self.dense_weight()
        if self.padding_mode != "zeros":
            x = F.pad(x, self._explicit_padding, mode=self.padding_mode)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def to_dense(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` of the same geometry, device and dtype with the rebuilt weight and the bias."""
        c = self.coefficients
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=self.groups,
                         bias=self.bias is not None, padding_mode=self.padding_mode, device=c.device, dtype=c.dtype)
        self._dense_bias(conv)
        return conv

    def layer_cost(self, *, in_hw: tuple[int, int] | None = None, tokens: int = 1) -> int:
        """MACs per sample, those of the dense conv: H'·W'·(I/groups)·kh·kw·O; ``tokens`` is unused.

        The weight rebuild runs once per forward, not per sample, and is not counted.
        """
        if in_hw is None:
            raise ValueError("layer_cost needs in_hw for a convolution")
        ho, wo = conv_output_hw(self, in_hw)
        return ho * wo * math.prod(self.weight_shape)

    def output_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Output (H', W') for an input of size ``hw``."""
        return conv_output_hw(self, hw)

    def extra_repr(self) -> str:
        """Geometry and reorder sizes for ``repr``."""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"padding_mode={self.padding_mode}, {super().extra_repr()}")


class ReorderedLinear(_Reordered):
    """A Linear (O, I) stored as reordered-row DCT coefficients; forward is ``F.linear``.

    Attributes:
        coefficients: (g, t) trainable low DCT frequencies.
        permutation: int64 (n,) persistent buffer.
        bias: (O,) or None.
        weight_shape: (O, I).
        rows, kept, n_cols: g, t and n = ⌈N/g⌉.
    """

    def __init__(self, in_features: int, out_features: int, rows: int, kept: int, *, bias: bool = True,
                 device=None, dtype=None):
        super().__init__((out_features, in_features), rows, kept, bias_features=out_features if bias else None,
                         device=device, dtype=dtype)
        self.in_features, self.out_features = int(in_features), int(out_features)

    def forward(self, x: Tensor) -> Tensor:
        """(…, I) → (…, O), with the weight rebuilt from the coefficients."""
        return F.linear(x, self.dense_weight(), self.bias)

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` on the same device and dtype with the rebuilt weight and the bias."""
        c = self.coefficients
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=c.device,
                        dtype=c.dtype)
        self._dense_bias(lin)
        return lin

    def layer_cost(self, *, in_hw: tuple[int, int] | None = None, tokens: int = 1) -> int:
        """MACs per sample, those of the dense layer: tokens·I·O."""
        return tokens * self.in_features * self.out_features

    def output_hw(self, hw: tuple[int, int] | None) -> tuple[int, int] | None:
        """A Linear leaves the spatial size alone."""
        return hw

    def extra_repr(self) -> str:
        """Sizes for ``repr``."""
        return f"in_features={self.in_features}, out_features={self.out_features}, {super().extra_repr()}"


def _two_ranks(ranks: Sequence[int]) -> tuple[int, int]:
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence) or len(ranks) != 2:
        raise ValueError(f"reorder needs ranks (g, t), got {ranks!r}")
    out = []
    for r in ranks:
        if isinstance(r, bool) or not hasattr(r, "__index__"):
            raise ValueError(f"reorder ranks must be integers, got {ranks!r}")
        out.append(int(r))
    return out[0], out[1]


def reorder_structure(layer: nn.Module, ranks: Sequence[int]) -> ReorderedConv2d | ReorderedLinear:
    """Empty reordered module for ``layer`` (any nn.Conv2d, including grouped, or nn.Linear) at ranks (g, t).

    The coefficients start at zero and the permutation at the identity; fill them with `load_reorder` or a
    state dict. Device and dtype follow the layer's weight.

    Args:
        layer: the dense layer to replace.
        ranks: (g, t): rows of the reshaped weight, 1 ≤ g ≤ N, and DCT coefficients kept per row,
            1 ≤ t ≤ n = ⌈N/g⌉, where N is the number of elements of the layer's weight.

    Raises:
        ValueError: another layer type, or ranks of the wrong count, type or range.
    """
    g, t = _two_ranks(ranks)
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise ValueError(f"reorder replaces nn.Conv2d or nn.Linear, not {type(layer).__name__}")
    p = layer.weight
    if isinstance(layer, nn.Linear):
        return ReorderedLinear(layer.in_features, layer.out_features, g, t, bias=layer.bias is not None,
                               device=p.device, dtype=p.dtype)
    return ReorderedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, g, t, stride=layer.stride,
                           padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                           padding_mode=layer.padding_mode, bias=layer.bias is not None,
                           device=p.device, dtype=p.dtype)


@torch.no_grad()
def load_reorder(module: ReorderedConv2d | ReorderedLinear, layer: nn.Module,
                 factors: ReorderFactors) -> ReorderedConv2d | ReorderedLinear:
    """Write `ReorderFactors` (coefficients (g, t), permutation (n,)) and ``layer``'s bias into ``module``.

    Returns:
        ``module``, filled (coefficients cast to its dtype).

    Raises:
        ValueError: the factors are of another weight shape, g, t or n than the module, the permutation is
            not a permutation of range(n), or the bias presence differs between module and layer.
    """
    if not isinstance(module, _Reordered):
        raise ValueError(f"load_reorder fills a ReorderedConv2d / ReorderedLinear, not {type(module).__name__}")
    if tuple(layer.weight.shape) != module.weight_shape:
        raise ValueError(f"the layer's weight {tuple(layer.weight.shape)} is not the module's {module.weight_shape}")
    if tuple(factors.shape) != module.weight_shape or (factors.groups, factors.kept, factors.n_cols) != (
            module.rows, module.kept, module.n_cols):
        raise ValueError(f"factors (shape {tuple(factors.shape)}, g={factors.groups}, t={factors.kept}, "
                         f"n={factors.n_cols}) do not fit the module (shape {module.weight_shape}, g={module.rows}, "
                         f"t={module.kept}, n={module.n_cols})")
    perm = factors.permutation.to(torch.int64)
    if not torch.equal(torch.sort(perm.cpu()).values, torch.arange(module.n_cols)):
        raise ValueError(f"the factors' permutation is not a permutation of range({module.n_cols})")
    if (module.bias is None) != (layer.bias is None):
        raise ValueError(f"bias mismatch: module {'has' if module.bias is not None else 'has no'} bias, "
                         f"layer {'has' if layer.bias is not None else 'has no'} bias")
    module.coefficients.copy_(factors.coefficients)
    module.permutation.copy_(perm)
    if module.bias is not None:
        module.bias.copy_(layer.bias)
    return module


def fold_reordered(model: nn.Module) -> int:
    """Replace, in place, every `ReorderedConv2d` / `ReorderedLinear` inside ``model`` by its ``to_dense()``.

    A module registered under several names (shared) is folded once and the one dense layer goes under
    every name, so sharing survives. Hooks registered on the reordered modules are not carried over.

    Returns:
        How many distinct reordered modules were folded.

    Raises:
        ValueError: ``model`` itself is a reordered module (call its ``to_dense()`` instead).
    """
    if isinstance(model, _Reordered):
        raise ValueError("fold_reordered replaces submodules; call to_dense() on a reordered module itself")
    dense: dict[int, nn.Module] = {}
    for parent in list(model.modules()):  # each parent once; its _modules lists every name a child has there
        # Not named_children(): it yields a child once per parent even when it has two names there.
        for name, child in list(parent._modules.items()):
            if isinstance(child, _Reordered):
                if id(child) not in dense:
                    dense[id(child)] = child.to_dense()
                setattr(parent, name, dense[id(child)])
    return len(dense)

