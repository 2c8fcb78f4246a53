"""Tensor-train (TT) decomposition by TT-SVD, and TDC's "special" TT form of a conv kernel.

TT-SVD sweeps left to right: unfold the remainder as (r_{k-1}·n_k, rest), keep the leading r_k left
singular vectors as core k, carry Σ·Vᵀ on. With ranks no larger than the exact TT ranks it is exact;
otherwise each truncation is optimal for its unfolding (quasi-optimal overall, error ≤ √(Σ_k ε_k²)).

A conv kernel W (O, I, kh, kw) viewed as the 3-way tensor (O, kh·kw, I) with TT ranks (R_a, R_b) has
three cores G1 (O, R_a), G2 (R_a, kh·kw, R_b), G3 (R_b, I): the same layer chain as Tucker-2
(1×1 I→R_b, kh×kw R_b→R_a, 1×1 R_a→O), but found by two sequential SVDs instead of HOOI. `tt_conv`
returns it as `TuckerFactors` so the Tucker-2 layer builder loads it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._spectral import relative_error
from .svd import truncated_svd
from .tucker import TuckerFactors

__all__ = ["TTFactors", "tt_conv", "tt_svd"]


@dataclass(frozen=True)
class TTFactors:
    """TT cores of an N-way tensor: core k has shape (r_{k-1}, n_k, r_k), with r_0 = r_N = 1."""

    cores: tuple[Tensor, ...]

    @property
    def ranks(self) -> tuple[int, ...]:
        """Inner TT ranks (r_1, …, r_{N-1})."""
        return tuple(int(c.shape[2]) for c in self.cores[:-1])

    @property
    def n_params(self) -> int:
        """Elements of all cores, Σ r_{k-1}·n_k·r_k."""
        return sum(c.numel() for c in self.cores)

    def reconstruct(self) -> Tensor:
        """Dense tensor of shape (n_1, …, n_N)."""
        out = self.cores[0].reshape(self.cores[0].shape[1], -1)  # (n_1, r_1)
        for core in self.cores[1:]:
            out = (out @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[2])
        return out.reshape([c.shape[1] for c in self.cores])

    def rel_error(self, tensor: Tensor) -> float:
        """Relative Frobenius error of the reconstruction against ``tensor``."""
        return relative_error(tensor, self.reconstruct())


def tt_svd(tensor: Tensor, ranks: Sequence[int]) -> TTFactors:
    """TT-SVD of an N-way tensor at the given inner ranks (each clipped to what its unfolding allows).

    Args:
        tensor: N-way tensor (n_1, …, n_N), N ≥ 2.
        ranks: N − 1 inner ranks (r_1, …, r_{N-1}), each ≥ 1.

    Returns:
        `TTFactors` in the input's dtype.
    """
    shape = tuple(tensor.shape)
    if len(ranks) != len(shape) - 1 or any(int(r) < 1 for r in ranks):
        raise ValueError(f"tt_svd of shape {shape} needs {len(shape) - 1} ranks ≥ 1, got {tuple(ranks)}")
    dt = tensor.dtype
    rest = tensor.detach().to(torch.float64)
    cores, r_prev = [], 1
    for k, n in enumerate(shape[:-1]):
        mat = rest.reshape(r_prev * n, -1)
        r = min(int(ranks[k]), *mat.shape)
        f = truncated_svd(mat, r)
        cores.append(f.u.reshape(r_prev, n, r).to(dt))
        rest = f.s[:, None] * f.vh
        r_prev = r
    cores.append(rest.reshape(r_prev, shape[-1], 1).to(dt))
    return TTFactors(tuple(cores))


def tt_conv(weight: Tensor, ranks: tuple[int, int]) -> TuckerFactors:
    """TT-SVD of a conv kernel (O, I, kh, kw) in the (O, kh·kw, I) view, as Tucker-2-shaped factors.

    Args:
        weight: conv kernel (O, I, kh, kw).
        ranks: (R_a, R_b): R_a ≤ O is the output-side rank, R_b ≤ I the input-side one.

    Returns:
        `TuckerFactors` with core (R_a, R_b, kh, kw), factors (G1 (O, R_a), G3ᵀ (I, R_b)); the factors are
        not orthonormal, and ``errors`` holds the exact relative error.
    """
    o, i, kh, kw = weight.shape
    ra, rb = int(ranks[0]), int(ranks[1])
    if not (1 <= ra <= o and 1 <= rb <= i):
        raise ValueError(f"TT ranks {ranks} are outside [1, {o}] × [1, {i}] for a kernel {tuple(weight.shape)}")
    tt = tt_svd(weight.permute(0, 2, 3, 1).reshape(o, kh * kw, i), (ra, rb))
    g1, g2, g3 = tt.cores
    fa, fb = g1.shape[2], g2.shape[2]  # an unfolding may allow less than asked (e.g. R_b > R_a·kh·kw)
    core = g2.reshape(fa, kh, kw, fb).permute(0, 3, 1, 2)
    # Zero-pad back to the requested ranks: the layer chain keeps the planned widths, the maths is exact.
    core = torch.nn.functional.pad(core, (0, 0, 0, 0, 0, rb - fb, 0, ra - fa)).contiguous()
    u_out = torch.nn.functional.pad(g1.reshape(o, fa), (0, ra - fa))
    u_in = torch.nn.functional.pad(g3.reshape(fb, i).T, (0, rb - fb)).contiguous()
    dense = torch.einsum("abhw,oa,ib->oihw", core.double(), u_out.double(), u_in.double())
    return TuckerFactors(core=core, factors=(u_out, u_in), modes=(0, 1), errors=(relative_error(weight, dense),))
