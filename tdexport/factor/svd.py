"""Truncated SVD of a matrix: W (O × I) ≈ U diag(s) Vh."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._spectral import Spectrum, relative_error, row_spectrum

__all__ = ["SVDFactors", "truncated_svd"]


@dataclass(frozen=True)
class SVDFactors:
    """Rank-r SVD factors of an (O × I) matrix.

    Attributes:
        u: left factor, shape (O, r), orthonormal columns.
        s: singular values, shape (r,), descending.
        vh: right factor, shape (r, I), orthonormal rows.
    """

    u: Tensor
    s: Tensor
    vh: Tensor

    def __post_init__(self) -> None:
        r = self.s.shape[0]
        if self.u.ndim != 2 or self.vh.ndim != 2 or self.u.shape[1] != r or self.vh.shape[0] != r:
            raise ValueError(
                f"SVD factor shapes do not agree: u {tuple(self.u.shape)}, s {tuple(self.s.shape)}, "
                f"vh {tuple(self.vh.shape)}"
            )

    @property
    def rank(self) -> int:
        """Number of kept singular triplets r."""
        return int(self.s.shape[0])

    @property
    def n_params(self) -> int:
        """Parameters of the two-layer form: r·(O + I)."""
        return self.rank * (self.u.shape[0] + self.vh.shape[1])

    def reconstruct(self) -> Tensor:
        """Dense (O × I) matrix U diag(s) Vh."""
        return (self.u * self.s) @ self.vh

    def rel_error(self, matrix: Tensor) -> float:
        """Relative Frobenius error of the reconstruction against ``matrix``."""
        return relative_error(matrix, self.reconstruct())


def truncated_svd(matrix: Tensor, rank: int, *, spectrum: Spectrum | None = None) -> SVDFactors:
    """Best rank-``rank`` approximation of a matrix (Eckart–Young).

    Computed from the eigendecomposition of the smaller Gram matrix in float64; the other side's
    singular vectors follow by projection, so U diag(s) Vh = M P exactly, where P projects onto the
    kept right (or left) singular subspace. Signs are fixed so the largest entry of each u column is
    positive, which makes the result deterministic.

    Args:
        matrix: shape (O, I).
        rank: 1 ≤ rank ≤ min(O, I).
        spectrum: optional precomputed `row_spectrum` of ``matrix`` (or of its transpose when O > I),
            reused to avoid a second eigendecomposition.

    Returns:
        `SVDFactors` in ``matrix``'s dtype and device.
    """
    if matrix.ndim != 2:
        raise ValueError(f"truncated_svd expects a matrix, got shape {tuple(matrix.shape)}")
    rows, cols = matrix.shape
    if not 1 <= rank <= min(rows, cols):
        raise ValueError(f"rank {rank} is outside [1, {min(rows, cols)}] for a {rows}×{cols} matrix")
    m = matrix.detach().to(torch.float64)
    transposed = rows > cols
    small = m.T if transposed else m
    spec = spectrum if spectrum is not None else row_spectrum(small)
    s = spec.values[:rank]
    left = spec.vectors[:, :rank]  # singular vectors of the smaller side
    # Zero singular values carry no energy: leave their other-side vector at zero instead of dividing by 0.
    safe = torch.where(s > 0, s, torch.ones_like(s))
    other = (small.T @ left) / safe * (s > 0)
    u, vh = (other, left.T) if transposed else (left, other.T)
    signs = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True))).squeeze(0)
    signs[signs == 0] = 1.0
    u, vh = u * signs, vh * signs[:, None]
    dt = matrix.dtype
    return SVDFactors(u=u.to(dt), s=s.to(dt), vh=vh.to(dt))
