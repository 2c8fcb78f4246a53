"""HT-2 (hierarchical Tucker-2, Gabor & Zdunek 2023) of a conv kernel, with energy-based ranks.

Model, for W (O, I, kh, kw) viewed as X (I, kh, O, kw):

    W[o, i, h, w] ≈ Σ_{a, c, b} U1[i, a] · G1[a, h, c] · G2[c, b, w] · U3[o, b]

a binary tree whose root splits {I, kh} | {O, kw}; the I and O leaves get factor matrices U1 (I, R1) and
U3 (O, R3), the spatial modes stay whole, and the root's rank is R13. It lowers to four plain convs:
1×1 I→R1 · kh×1 R1→R13 (vertical stride/padding/dilation) · 1×kw R13→R3 (horizontal) · 1×1 R3→O.

Algorithm (one pass, no iterations):

1. U1 = leading R1 left singular vectors of the mode-I unfolding (I × O·kh·kw); U3 likewise for the
   mode-O unfolding (O × I·kh·kw).
2. Y = W ×_I U1ᵀ ×_O U3ᵀ, arranged as the matrix Y_mat (R1·kh × R3·kw) with rows (a, h) and columns (b, w).
3. Best rank-R13 approximation of Y_mat: G1 = its left singular vectors reshaped (R1, kh, R13),
   G2 = diag(σ)·Vᵀ reshaped (R13, R3, kw).

The factor subspaces are orthogonal projections and the last step is Eckart–Young on Y_mat, so
‖W − Ŵ‖² = ‖W‖² − Σ_{k≤R13} σ_k(Y_mat)². Because the leading singular vectors are nested, growing R1 or R3
only adds rows or columns to Y_mat, so the error never increases with any of the three ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._spectral import Spectrum, mode_product, mode_spectrum, relative_error, singular_values
from .svd import truncated_svd
from .tucker import _leading

__all__ = [
    "HT2Factors",
    "check_ht2_ranks",
    "energy_rank",
    "ht2",
    "ht2_energy_ranks",
    "ht2_projected_matrix",
    "ht2_reconstruct",
]


@dataclass(frozen=True)
class HT2Factors:
    """HT-2 factors of a conv kernel (O, I, kh, kw).

    Attributes:
        u1: input factor, shape (I, R1), orthonormal columns (weights of the first 1×1 conv, transposed).
        g1: left root core, shape (R1, kh, R13) (the kh×1 conv).
        g2: right root core, shape (R13, R3, kw) (the 1×kw conv); carries the singular values.
        u3: output factor, shape (O, R3), orthonormal columns (weights of the last 1×1 conv).
    """

    u1: Tensor
    g1: Tensor
    g2: Tensor
    u3: Tensor

    def __post_init__(self) -> None:
        ok = (
            self.u1.ndim == 2 and self.g1.ndim == 3 and self.g2.ndim == 3 and self.u3.ndim == 2
            and self.u1.shape[1] == self.g1.shape[0]
            and self.g1.shape[2] == self.g2.shape[0]
            and self.g2.shape[1] == self.u3.shape[1]
        )
        if not ok:
            raise ValueError(
                f"HT-2 factor shapes do not chain: u1 {tuple(self.u1.shape)}, g1 {tuple(self.g1.shape)}, "
                f"g2 {tuple(self.g2.shape)}, u3 {tuple(self.u3.shape)}"
            )

    @property
    def ranks(self) -> tuple[int, int, int]:
        """(R1, R13, R3)."""
        return int(self.u1.shape[1]), int(self.g1.shape[2]), int(self.u3.shape[1])

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """Shape (O, I, kh, kw) of the kernel these factors rebuild."""
        return int(self.u3.shape[0]), int(self.u1.shape[0]), int(self.g1.shape[1]), int(self.g2.shape[2])

    @property
    def n_params(self) -> int:
        """Weights of the four-conv chain without bias: I·R1 + kh·R1·R13 + kw·R13·R3 + R3·O."""
        return self.u1.numel() + self.g1.numel() + self.g2.numel() + self.u3.numel()

    def reconstruct(self) -> Tensor:
        """Dense kernel (O, I, kh, kw); same as `ht2_reconstruct`."""
        return ht2_reconstruct(self)

    def rel_error(self, weight: Tensor) -> float:
        """Relative Frobenius error of the reconstruction against ``weight``."""
        return relative_error(weight, self.reconstruct())


def ht2_reconstruct(f: HT2Factors) -> Tensor:
    """Dense kernel W (O, I, kh, kw) = Σ U1[i,a]·G1[a,h,c]·G2[c,b,w]·U3[o,b], in the factors' dtype."""
    r1, kh, r13 = f.g1.shape
    _, r3, kw = f.g2.shape
    # Contract the root first: (R1·kh × R13)(R13 × R3·kw) is the smallest intermediate.
    root = (f.g1.reshape(r1 * kh, r13) @ f.g2.reshape(r13, r3 * kw)).reshape(r1, kh, r3, kw)
    return torch.einsum("ia,ahbw,ob->oihw", f.u1, root, f.u3)


def _check_weight(weight: Tensor) -> None:
    if not isinstance(weight, Tensor) or weight.ndim != 4:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"expected a conv kernel (O, I, kh, kw), got {shape}")
    if not weight.is_floating_point():
        raise ValueError(f"expected a floating-point kernel, got {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError(f"empty kernel of shape {tuple(weight.shape)}")


def _as_rank(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__index__"):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        rank = int(value)
    except (OverflowError, TypeError, ValueError):  # inf, nan, odd index types
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if rank != value:
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return rank


def check_ht2_ranks(shape: Sequence[int], ranks: Sequence[int]) -> tuple[int, int, int]:
    """Validate HT-2 ranks for a kernel of ``shape`` (O, I, kh, kw).

    Returns:
        (R1, R13, R3) as ints with 1 ≤ R1 ≤ I, 1 ≤ R3 ≤ O and 1 ≤ R13 ≤ min(R1·kh, R3·kw).

    Raises:
        ValueError: wrong count, non-integers or a rank outside its range.
    """
    o, i, kh, kw = (int(s) for s in shape)
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence) or len(ranks) != 3:
        raise ValueError(f"HT-2 needs three ranks (R1, R13, R3), got {ranks!r}")
    r1, r13, r3 = (_as_rank(r, n) for r, n in zip(ranks, ("R1", "R13", "R3"), strict=True))
    if not 1 <= r1 <= i:
        raise ValueError(f"R1={r1} is outside [1, {i}] (input channels) for a kernel {tuple(shape)}")
    if not 1 <= r3 <= o:
        raise ValueError(f"R3={r3} is outside [1, {o}] (output channels) for a kernel {tuple(shape)}")
    top = min(r1 * kh, r3 * kw)
    if not 1 <= r13 <= top:
        raise ValueError(f"R13={r13} is outside [1, min(R1·kh, R3·kw) = {top}] for a kernel {tuple(shape)}")
    return r1, r13, r3


def ht2_projected_matrix(weight: Tensor, u1: Tensor, u3: Tensor) -> Tensor:
    """The matrix HT-2's root is fitted to: Y_mat = (W ×_I U1ᵀ ×_O U3ᵀ) arranged (R1·kh × R3·kw).

    Args:
        weight: kernel (O, I, kh, kw).
        u1: input factor (I, R1).
        u3: output factor (O, R3).

    Returns:
        Y_mat with rows indexed (a, h) (a slow) and columns (b, w) (b slow), in the weight's dtype.
    """
    kh, kw = weight.shape[2], weight.shape[3]
    y = mode_product(mode_product(weight, u3.T, 0), u1.T, 1)  # (R3, R1, kh, kw)
    r3, r1 = y.shape[0], y.shape[1]
    return y.permute(1, 2, 0, 3).reshape(r1 * kh, r3 * kw)


def energy_rank(values: Tensor, energy: float) -> int:
    """Smallest k with Σ_{i≤k} σᵢ² / Σ σ² > ``energy`` (strict, as in the HT-2 seed); 1 for a zero matrix.

    Args:
        values: singular values, descending.
        energy: fraction in (0, 1).

    Returns:
        k in [1, len(values)].
    """
    e = _check_energy(energy)
    cum = (values.detach().to(torch.float64) ** 2).cumsum(0)
    total = float(cum[-1])
    if total <= 0:
        return 1
    return min(int((cum / total <= e).sum()) + 1, int(values.numel()))


def _check_energy(energy: float) -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)):
        raise ValueError(f"energy must be a number in (0, 1), got {energy!r}")
    e = float(energy)
    if not 0.0 < e < 1.0:  # the rule is strict (> e), so e = 1 could never be met
        raise ValueError(f"energy must be in (0, 1), got {energy!r}")
    return e


def _mode_spectra(x: Tensor, spectra: Sequence[Spectrum | None] | None) -> tuple[Spectrum, Spectrum]:
    if spectra is not None and len(spectra) != 2:
        raise ValueError("spectra must be (mode-I spectrum, mode-O spectrum)")
    s_in, s_out = spectra if spectra is not None else (None, None)
    return (s_in if s_in is not None else mode_spectrum(x, 1), s_out if s_out is not None else mode_spectrum(x, 0))


def ht2_energy_ranks(
    weight: Tensor, energy: float, *, spectra: Sequence[Spectrum | None] | None = None
) -> tuple[int, int, int]:
    """HT-2 ranks by the seed's energy rule: per matrix, the smallest k keeping more than ``energy`` of Σσ².

    * R1: on the mode-I unfolding of W, shape (I × O·kh·kw);
    * R3: on the mode-O unfolding, shape (O × I·kh·kw);
    * R13: on the matrix the root factorization is actually applied to, the projected
      Y_mat = (W ×_I U1ᵀ ×_O U3ᵀ) of shape (R1·kh × R3·kw), rows (a, h) and columns (b, w), built with
      the R1 and R3 just chosen; the fraction is of ‖Y_mat‖², not of ‖W‖².

    The seed estimates R13 on the unprojected (I·kh × O·kw) matrix instead, a different spectrum from
    the one it truncates. (Its R13 also never exceeds min(R1·kh, R3·kw): by Ky Fan, the top R1·kh
    singular values of that matrix hold at least ‖W ×_I U1U1ᵀ‖² > energy·‖W‖².) Here R13 ≤ min(R1·kh, R3·kw)
    holds by construction.

    Monotonicity: R1 and R3 never decrease as ``energy`` grows. R13 usually grows too, but it is not
    guaranteed to, because Y_mat itself changes with R1 and R3: a larger R1 can add rows that carry a
    dominant direction, so fewer root components reach the fraction. In that case the approximation
    error can rise slightly with ``energy``. For example, a random (4, 20, 3, 3) kernel with uneven filter
    norms gives (2, 2, 1) at 0.50 and (3, 1, 1) at 0.51. This happened at 1 of about 4000 (kernel, energy)
    steps in a random sweep. A caller that needs monotone ranks should take the running maximum over
    energies.

    Args:
        weight: kernel (O, I, kh, kw).
        energy: fraction in (0, 1), the same for all three matrices (the seed's ``-e``, e.g. 0.9).
        spectra: optional precomputed (mode-I, mode-O) `mode_spectrum` of the weight, for reuse.

    Returns:
        (R1, R13, R3).
    """
    _check_weight(weight)
    _check_energy(energy)
    x = weight.detach().to(torch.float64)
    s_in, s_out = _mode_spectra(x, spectra)
    r1, r3 = energy_rank(s_in.values, energy), energy_rank(s_out.values, energy)
    y = ht2_projected_matrix(x, _leading(s_in, r1), _leading(s_out, r3))
    r13 = energy_rank(singular_values(y), energy)
    return r1, r13, r3


def ht2(weight: Tensor, ranks: Sequence[int], *, spectra: Sequence[Spectrum | None] | None = None) -> HT2Factors:
    """HT-2 of a conv kernel at ranks (R1, R13, R3); see the module docstring for the algorithm.

    Computed in float64 (Gram-matrix eigendecompositions, like `tucker2`); factors come back in the
    weight's dtype. Full ranks (I, min(I·kh, O·kw), O) reproduce the kernel to rounding.

    Args:
        weight: kernel (O, I, kh, kw).
        ranks: (R1, R13, R3) with 1 ≤ R1 ≤ I, 1 ≤ R3 ≤ O, 1 ≤ R13 ≤ min(R1·kh, R3·kw).
        spectra: optional precomputed (mode-I, mode-O) `mode_spectrum` of the weight, for reuse.

    Returns:
        `HT2Factors` u1 (I, R1), g1 (R1, kh, R13), g2 (R13, R3, kw), u3 (O, R3).
    """
    _check_weight(weight)
    kh, kw = weight.shape[2], weight.shape[3]
    r1, r13, r3 = check_ht2_ranks(weight.shape, ranks)
    x = weight.detach().to(torch.float64)
    s_in, s_out = _mode_spectra(x, spectra)
    u1, u3 = _leading(s_in, r1), _leading(s_out, r3)
    root = truncated_svd(ht2_projected_matrix(x, u1, u3), r13)
    g1 = root.u.reshape(r1, kh, r13)
    g2 = (root.s[:, None] * root.vh).reshape(r13, r3, kw)
    dt = weight.dtype
    return HT2Factors(u1=u1.to(dt), g1=g1.to(dt), g2=g2.to(dt), u3=u3.to(dt))
