"""Tucker-1 on the output mode (the HT-2 seed's ``conv_svd``) for any kh×kw conv kernel.

W (O, I, kh, kw) is read as the mode-O unfolding M (O × I·kh·kw) and truncated by SVD: M ≈ U diag(σ) Vᵀ.
The core C = diag(σ)·Vᵀ reshaped (R, I, kh, kw) is a kh×kw conv I→R (the original stride, padding and
dilation), followed by a 1×1 conv R→O with weights U. This equals partial Tucker on mode 0 alone
(core = Uᵀ ×₀ W), so one truncated SVD is the whole algorithm and its error is Eckart–Young optimal.
Used for stems (few input channels, large kernel) and 1×1 convs, where Tucker-2 / HT-2 save little.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._spectral import relative_error, singular_values, unfold
from .ht2 import _as_rank, _check_weight, energy_rank
from .svd import truncated_svd

__all__ = ["Tucker1Factors", "tucker1", "tucker1_energy_rank", "tucker1_reconstruct"]


@dataclass(frozen=True)
class Tucker1Factors:
    """Tucker-1 (output-mode) factors of a conv kernel (O, I, kh, kw).

    Attributes:
        core: (R, I, kh, kw), the first (spatial) conv's weights; carries the singular values.
        u: (O, R), orthonormal columns, the 1×1 output conv's weights.
    """

    core: Tensor
    u: Tensor

    def __post_init__(self) -> None:
        if self.core.ndim != 4 or self.u.ndim != 2 or self.u.shape[1] != self.core.shape[0]:
            raise ValueError(
                f"Tucker-1 factor shapes do not agree: core {tuple(self.core.shape)}, u {tuple(self.u.shape)}"
            )

    @property
    def rank(self) -> int:
        """R, the channels between the two convs."""
        return int(self.u.shape[1])

    @property
    def n_params(self) -> int:
        """Weights of the two-conv chain without bias: R·I·kh·kw + O·R."""
        return self.core.numel() + self.u.numel()

    def reconstruct(self) -> Tensor:
        """Dense kernel (O, I, kh, kw); same as `tucker1_reconstruct`."""
        return tucker1_reconstruct(self)

    def rel_error(self, weight: Tensor) -> float:
        """Relative Frobenius error of the reconstruction against ``weight``."""
        return relative_error(weight, self.reconstruct())


def tucker1_reconstruct(f: Tucker1Factors) -> Tensor:
    """Dense kernel W (O, I, kh, kw) = U · C over the first axis, in the factors' dtype."""
    r, i, kh, kw = f.core.shape
    return (f.u @ f.core.reshape(r, -1)).reshape(-1, i, kh, kw)


def tucker1_energy_rank(weight: Tensor, energy: float) -> int:
    """Rank by the seed's energy rule on the mode-O unfolding (O × I·kh·kw).

    Returns:
        The smallest R keeping more than ``energy`` (in (0, 1)) of Σσ², in [1, min(O, I·kh·kw)].
    """
    _check_weight(weight)
    return energy_rank(singular_values(unfold(weight.detach(), 0)), energy)


def tucker1(weight: Tensor, rank: int) -> Tucker1Factors:
    """Tucker-1 of a conv kernel on its output mode at rank R.

    Args:
        weight: kernel (O, I, kh, kw), any kernel size.
        rank: R in [1, min(O, I·kh·kw)].

    Returns:
        `Tucker1Factors` core (R, I, kh, kw) and u (O, R), in the weight's dtype.
    """
    _check_weight(weight)
    o, i, kh, kw = weight.shape
    r = _as_rank(rank, "rank")
    if not 1 <= r <= min(o, i * kh * kw):
        raise ValueError(f"rank {r} is outside [1, min(O, I·kh·kw) = {min(o, i * kh * kw)}] for {tuple(weight.shape)}")
    # Factor in float64, fold the singular values into the core, cast back to the weight dtype at the end.
    f = truncated_svd(unfold(weight.detach().to(torch.float64), 0), r)
    core = (f.s[:, None] * f.vh).reshape(r, i, kh, kw)
    dt = weight.dtype
    return Tucker1Factors(core=core.to(dt), u=f.u.to(dt))
