"""General tensor-train (TT) form of a conv or linear weight: channel modes split into several TT modes.

TDC's "general" TT factors O = ∏ o_j and I = ∏ i_j into several modes each. Here the weight is viewed,
in ONE fixed mode ordering used by both decomposition and reconstruction (TDC's R variant used two
different orderings, which loses the TT structure; seed §1.7.1):

    conv   (O, I, kh, kw) → permute to (I, kh, kw, O) → reshape (i_1, …, i_n, kh·kw, o_1, …, o_m)
    linear (O, I)         → transpose to (I, O)        → reshape (i_1, …, i_n, o_1, …, o_m)

with the channel index c = (i_1, …, i_n) in row-major order (i_1 slowest), and likewise for O. Cores
come from TT-SVD (`tt.tt_svd`) left to right: input cores (r_{k-1}, i_k, r_k), the spatial core
(r_n, kh·kw, r_{n+1}), output cores (r, o_k, r'), with outer ranks 1. This order lets the layer chain
contract the input modes first (i_1 first), run one k×k conv on the bond, then expand the output modes;
`tdexport.layers_tt` builds it without any transposition.

Ranks: a list of inner bond ranks, or one int used as the maximum for every bond. Both are clamped to
what the cores can carry, r_k ≤ r_{k-1}·n_k and r_k ≤ n_{k+1}·r_{k+1} (hence also r_k ≤ min(∏ left, ∏ right)
sizes): a larger bond would only add channels that are identically zero. `TTGeneralFactors.clamped`
reports every bond that was lowered.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ._spectral import relative_error
from .tt import TTFactors, tt_svd

__all__ = [
    "TTGeneralFactors",
    "balanced_split",
    "clamp_tt_ranks",
    "resolve_modes",
    "tt_general",
    "tt_general_reconstruct",
    "tt_mode_sizes",
    "tt_view",
    "from_tt_view",
]


def _factorizations(n: int, k: int, largest: int) -> Iterator[tuple[int, ...]]:
    """All ways to write n as k factors ≥ 1 in non-increasing order, each ≤ ``largest``."""
    if k == 1:
        if n <= largest:
            yield (n,)
        return
    # The first (largest) factor d must satisfy d^k ≥ n, otherwise the rest cannot reach n.
    for d in range(min(n, largest), 0, -1):
        if n % d:
            continue
        if d**k < n:
            break
        for rest in _factorizations(n // d, k - 1, d):
            yield (d, *rest)


def balanced_split(n: int, modes: int) -> tuple[int, ...]:
    """Factor ``n`` into exactly ``modes`` integer factors that are as equal as possible.

    "As equal as possible" means the smallest spread of log-factors (Σ log² f_j, whose sum Σ log f_j = log n
    is fixed), e.g. 64 → (8, 8), 96 → (12, 8), 64 over 3 modes → (4, 4, 4), 512 → (32, 16). A prime or
    a number with fewer prime factors than ``modes`` gets factors of 1, e.g. 3 → (3, 1).

    Args:
        n: the channel count, ≥ 1.
        modes: number of factors, ≥ 1.

    Returns:
        The factors, largest first; their product is exactly ``n``.
    """
    if isinstance(n, bool) or isinstance(modes, bool) or not isinstance(n, int) or not isinstance(modes, int):
        raise ValueError(f"balanced_split needs integers, got n={n!r}, modes={modes!r}")
    if n < 1 or modes < 1:
        raise ValueError(f"balanced_split needs n ≥ 1 and modes ≥ 1, got n={n}, modes={modes}")
    best = min(_factorizations(n, modes, n), key=lambda fs: sum(math.log(f) ** 2 for f in fs))
    return best


def resolve_modes(n: int, spec: int | Sequence[int]) -> tuple[int, ...]:
    """Mode sizes of one channel axis: ``balanced_split(n, spec)`` for an int, else the given sizes checked.

    Args:
        n: the channel count (O or I).
        spec: number of modes, or the mode sizes themselves (each ≥ 1, product exactly ``n``).
    """
    if isinstance(spec, int) and not isinstance(spec, bool):
        return balanced_split(n, spec)
    sizes = tuple(spec)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"mode sizes must be a non-empty list of integers ≥ 1, got {sizes!r}")
    if math.prod(sizes) != n:
        raise ValueError(f"mode sizes {sizes} multiply to {math.prod(sizes)}, not to the channel count {n}")
    return sizes


def tt_mode_sizes(shape_in: Sequence[int], shape_out: Sequence[int],
                  kernel: tuple[int, int] | None) -> tuple[int, ...]:
    """TT mode sizes in the fixed order (i_1, …, i_n, [kh·kw,] o_1, …, o_m); no spatial mode for a Linear."""
    spatial = () if kernel is None else (int(kernel[0]) * int(kernel[1]),)
    return (*shape_in, *spatial, *shape_out)


def clamp_tt_ranks(mode_sizes: Sequence[int], ranks: int | Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Inner TT ranks for ``mode_sizes``, lowered to what the cores can carry.

    Args:
        mode_sizes: (n_1, …, n_d), d ≥ 2.
        ranks: d − 1 requested inner ranks, or one int used for every bond (a maximum rank); each ≥ 1.

    Returns:
        (requested, used): both of length d − 1. ``used[k] ≤ requested[k]``, and
        used_k ≤ used_{k-1}·n_k, used_k ≤ n_{k+1}·used_{k+1} (used_0 = used_d = 1), so every core
        unfolding can be of full rank: no bond channel is structurally zero.
    """
    sizes = tuple(int(s) for s in mode_sizes)
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"a TT needs at least 2 modes of size ≥ 1, got {sizes}")
    bonds = len(sizes) - 1
    if isinstance(ranks, int) and not isinstance(ranks, bool):
        requested = (ranks,) * bonds
    else:
        requested = tuple(ranks)
        if len(requested) != bonds:
            raise ValueError(f"{len(sizes)} TT modes {sizes} need {bonds} inner ranks, got {len(requested)}")
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in requested):
        raise ValueError(f"TT ranks must be integers ≥ 1, got {requested!r}")
    used = list(requested)
    prev = 1
    for k in range(bonds):  # left to right: a bond cannot exceed what flows in from its left core
        used[k] = prev = min(used[k], prev * sizes[k])
    nxt = 1
    for k in range(bonds - 1, -1, -1):  # right to left: nor what its right core can absorb
        used[k] = nxt = min(used[k], sizes[k + 1] * nxt)
    return requested, tuple(used)


def tt_view(weight: Tensor, shape_in: Sequence[int], shape_out: Sequence[int]) -> Tensor:
    """The weight as the TT tensor (i_1, …, i_n, [kh·kw,] o_1, …, o_m) (a permuted copy, reshaped).

    Args:
        weight: conv kernel (O, I, kh, kw) or Linear weight (O, I).
        shape_in: input mode sizes, ∏ = I.
        shape_out: output mode sizes, ∏ = O.
    """
    if weight.ndim == 4:
        o, i, kh, kw = weight.shape
        return weight.permute(1, 2, 3, 0).reshape(*shape_in, kh * kw, *shape_out)
    if weight.ndim == 2:
        return weight.T.reshape(*shape_in, *shape_out)
    raise ValueError(f"expected a conv kernel (O, I, kh, kw) or a Linear weight (O, I), got {tuple(weight.shape)}")


def from_tt_view(tensor: Tensor, out_channels: int, in_channels: int, kernel: tuple[int, int] | None) -> Tensor:
    """Inverse of `tt_view`: back to (O, I, kh, kw), or (O, I) when ``kernel`` is None."""
    if kernel is None:
        return tensor.reshape(in_channels, out_channels).T
    kh, kw = kernel
    return tensor.reshape(in_channels, kh, kw, out_channels).permute(3, 0, 1, 2)


@dataclass(frozen=True)
class TTGeneralFactors:
    """General-TT cores of a conv or linear weight.

    Attributes:
        cores: core k has shape (r_{k-1}, n_k, r_k) over the modes of `tt_mode_sizes` (outer ranks 1):
            n input cores, then the spatial core (convs only), then m output cores.
        shape_in: (i_1, …, i_n), ∏ = I.
        shape_out: (o_1, …, o_m), ∏ = O.
        kernel: (kh, kw) of a conv, None for a Linear.
        requested_ranks: the inner ranks asked for (one per bond), before clamping.
        error: relative Frobenius error ‖W − Ŵ‖ / ‖W‖ of these cores.
    """

    cores: tuple[Tensor, ...]
    shape_in: tuple[int, ...]
    shape_out: tuple[int, ...]
    kernel: tuple[int, int] | None
    requested_ranks: tuple[int, ...]
    error: float

    def __post_init__(self) -> None:
        sizes = self.mode_sizes
        if len(self.cores) != len(sizes):
            raise ValueError(f"{len(self.cores)} cores for {len(sizes)} TT modes {sizes}")
        prev = 1
        for k, (core, n) in enumerate(zip(self.cores, sizes, strict=True)):
            if core.ndim != 3 or core.shape[0] != prev or core.shape[1] != n:
                raise ValueError(f"core {k} has shape {tuple(core.shape)}, expected ({prev}, {n}, r)")
            prev = core.shape[2]
        if prev != 1:
            raise ValueError(f"the last core must end in rank 1, got {prev}")
        if len(self.requested_ranks) != len(sizes) - 1:
            raise ValueError(f"{len(self.requested_ranks)} requested ranks for {len(sizes) - 1} bonds")

    @property
    def mode_sizes(self) -> tuple[int, ...]:
        """TT mode sizes (i_1, …, i_n, [kh·kw,] o_1, …, o_m)."""
        return tt_mode_sizes(self.shape_in, self.shape_out, self.kernel)

    @property
    def ranks(self) -> tuple[int, ...]:
        """Inner TT ranks actually used (r_1, …, r_{d-1})."""
        return tuple(int(c.shape[2]) for c in self.cores[:-1])

    @property
    def clamped(self) -> tuple[tuple[int, int, int], ...]:
        """(bond index, requested, used) for every bond whose rank was lowered; empty when none was."""
        return tuple((k, r, u) for k, (r, u) in enumerate(zip(self.requested_ranks, self.ranks, strict=True))
                     if u < r)

    @property
    def n_params(self) -> int:
        """Elements of all cores, Σ r_{k-1}·n_k·r_k (the layer chain adds only the bias)."""
        return sum(c.numel() for c in self.cores)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the dense weight: (O, I, kh, kw) or (O, I)."""
        o, i = math.prod(self.shape_out), math.prod(self.shape_in)
        return (o, i) if self.kernel is None else (o, i, *self.kernel)

    def reconstruct(self) -> Tensor:
        """Dense weight in the cores' dtype, shape `weight_shape`."""
        return tt_general_reconstruct(self)

    def rel_error(self, weight: Tensor) -> float:
        """Relative Frobenius error of the reconstruction against ``weight``."""
        return relative_error(weight, self.reconstruct())


def tt_general(weight: Tensor, shape_in: int | Sequence[int], shape_out: int | Sequence[int],
               ranks: int | Sequence[int]) -> TTGeneralFactors:
    """General TT of a conv kernel (O, I, kh, kw) or a Linear weight (O, I) by TT-SVD (float64 inside).

    Args:
        weight: the dense weight.
        shape_in: input mode sizes (∏ = I), or their number for `balanced_split`.
        shape_out: output mode sizes (∏ = O), or their number for `balanced_split`.
        ranks: inner ranks, one per bond (n + m for a conv, n + m − 1 for a Linear), or one int as the
            maximum rank of every bond; clamped by `clamp_tt_ranks` (see ``clamped`` on the result).

    Returns:
        `TTGeneralFactors` with cores in ``weight``'s dtype. At ranks no lower than the clamped maximum
        the reconstruction is exact up to rounding; otherwise each bond's truncation is the best for its
        unfolding (quasi-optimal overall).
    """
    if weight.ndim not in (2, 4) or not weight.is_floating_point():
        raise ValueError(f"tt_general needs a floating conv kernel (O, I, kh, kw) or Linear weight (O, I), "
                         f"got {weight.dtype} {tuple(weight.shape)}")
    o, i = int(weight.shape[0]), int(weight.shape[1])
    kernel = (int(weight.shape[2]), int(weight.shape[3])) if weight.ndim == 4 else None
    s_in, s_out = resolve_modes(i, shape_in), resolve_modes(o, shape_out)
    sizes = tt_mode_sizes(s_in, s_out, kernel)
    requested, used = clamp_tt_ranks(sizes, ranks)
    # tt_svd never lowers a rank further: the clamp already keeps r_k ≤ both sides of every unfolding.
    tt = tt_svd(tt_view(weight.detach(), s_in, s_out), used)
    f = TTGeneralFactors(cores=tt.cores, shape_in=s_in, shape_out=s_out, kernel=kernel,
                         requested_ranks=requested, error=0.0)
    return replace(f, error=f.rel_error(weight))


def tt_general_reconstruct(f: TTGeneralFactors) -> Tensor:
    """Dense weight (O, I, kh, kw) or (O, I) from general-TT cores, in the cores' dtype."""
    dense = TTFactors(tuple(c.to(torch.float64) for c in f.cores)).reconstruct()
    o, i = math.prod(f.shape_out), math.prod(f.shape_in)
    return from_tt_view(dense, o, i, f.kernel).to(f.cores[0].dtype).contiguous()
