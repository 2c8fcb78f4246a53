"""Empirical variational Bayes matrix factorization (EVBMF) rank estimate.

Nakajima et al.'s analytic EVBMF: estimate the noise variance σ² by minimising the EVB free energy
over a bounded interval, then count the singular values above the EVB threshold. Only the rank is
needed, not the shrunken singular values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._spectral import singular_values

__all__ = ["evbmf_rank", "evbmf_rank_from_values"]

_TAU_BAR_COEF = 2.5129  # the constant in τ̄ = 2.5129·√α from the EVBMF analysis


def _free_energy(sigma2: Tensor, gamma2: Tensor, rows: int, cols: int, residual: float, x_bar: float) -> Tensor:
    """EVB free energy (up to constants) for a batch of candidate noise variances.

    Args:
        sigma2: candidate variances, shape (n,).
        gamma2: squared singular values, shape (H,).
        rows: L, the smaller dimension of the matrix.
        cols: M, the larger dimension.
        residual: squared Frobenius norm of the part of the matrix outside the H values given.
        x_bar: EVB threshold x̄ = (1 + τ̄)(1 + α/τ̄) on γ²/(M·σ²); components below it are pruned.

    Returns:
        Objective values, shape (n,).
    """
    alpha = rows / cols
    x = gamma2[None, :] / (cols * sigma2[:, None])  # (n, H)
    above = x > x_bar
    # τ(x) is only real above the threshold; evaluate it on a clamped copy and mask afterwards.
    xa = torch.where(above, x, torch.full_like(x, x_bar + 1.0))
    b = xa - (1.0 + alpha)
    tau = 0.5 * (b + torch.sqrt((b * b - 4.0 * alpha).clamp_min(0.0)))
    below_terms = torch.where(above, torch.zeros_like(x), x - torch.log(x))
    above_terms = torch.where(
        above,
        xa - tau + torch.log((tau + 1.0) / xa) + alpha * torch.log(tau / alpha + 1.0),
        torch.zeros_like(x),
    )
    h = gamma2.shape[0]
    return (
        below_terms.sum(1)
        + above_terms.sum(1)
        + residual / (cols * sigma2)
        + (rows - h) * torch.log(sigma2)
    )


def _zero_tolerance(sigma_max: float, shape: tuple[int, int], dtype: torch.dtype = torch.float64) -> float:
    """Largest singular value that is numerically zero for a matrix of ``shape`` with top value ``sigma_max``.

    Two rounding floors, whichever is larger:

    * σ_max·max(L, M)·eps(dtype): the usual numerical-rank tolerance for data held in ``dtype`` (the
      precision of the values, or of the matrix they came from). Half-precision data is assessed at
      float32's eps: with bfloat16's, the bound would exceed σ_max itself for a few hundred rows.
    * σ_max·√(max(L, M)·eps(float64)): tdexport computes spectra as square roots of float64 Gram
      eigenvalues (`row_spectrum`, `mode_spectrum`), whose rounding noise is about max(L, M)·eps·σ_max²,
      so an exactly-zero singular value comes back as up to ~√(max(L, M)·eps)·σ_max instead of 0.

    Both are far below any noise level EVBMF could resolve, so only true zeros (pruned or dead rows,
    exact rank deficiency) fall under it.

    Args:
        sigma_max: largest singular value, ≥ 0.
        shape: (rows, cols) of the matrix.
        dtype: dtype of the values or of the matrix they came from; non-float dtypes count as float64.

    Returns:
        The tolerance, in the units of ``sigma_max``.
    """
    n = max(int(shape[0]), int(shape[1]), 1)
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps
    svd_floor = n * min(eps, torch.finfo(torch.float32).eps)
    gram_floor = math.sqrt(n * torch.finfo(torch.float64).eps)
    return float(sigma_max) * max(svd_floor, gram_floor)


def evbmf_rank_from_values(
    values: Tensor, shape: tuple[int, int], *, residual: float = 0.0, dtype: torch.dtype | None = None
) -> int:
    """EVBMF rank from the singular values of an (L × M) matrix.

    The matrix is treated with L ≤ M (the shape is swapped when needed, which is the guard the seed
    implementations lacked), and the result is clamped to [1, min(L, M)].

    Zero singular values (pruned or dead filters, exact rank deficiency, or the rounding noise a Gram
    eigendecomposition leaves in their place: any value ≤ `_zero_tolerance`) are dropped, and the
    matrix is treated as the (L − k) × M matrix of its positive part, k the number dropped. Kept, an
    exact zero makes the free energy infinite for every σ² (no Gaussian noise produces it) and pulls
    the lower bound of σ² towards 0, so nearly every value would count as signal. This way zeroing
    rows of a matrix leaves its EVBMF rank unchanged. A matrix with no positive value gets rank 1.

    The flip side: a noise-free matrix of exact rank r reads as an r × M matrix with nothing left to
    calibrate the noise against, and gets a rank below r. Trained weights are never noise-free; for
    such synthetic layers use an ``energy:`` or fixed rank.

    Args:
        values: singular values, shape (H,), any order; H ≤ min(L, M).
        shape: (rows, cols) of the matrix they came from.
        residual: ‖Y‖² − Σ values², the energy outside the given values (0 when all are given; then
            the L − H values not given are zeros).
        dtype: precision of the matrix the values came from, for the zero tolerance; default
            ``values.dtype``.

    Returns:
        Estimated rank, an int in [1, min(shape)].
    """
    rows, cols = sorted(int(s) for s in shape)
    gamma = values.detach().to(torch.float64).flatten().sort(descending=True).values[:rows]
    if gamma.numel() == 0 or not float(gamma[0]) > 0.0:
        return 1
    tol = _zero_tolerance(float(gamma[0]), (rows, cols), dtype if dtype is not None else values.dtype)
    given = gamma.numel()
    gamma = gamma[gamma > tol]
    # Values not given are positive only when they carry energy beyond rounding.
    missing = rows - given if residual > (rows - given) * tol * tol else 0
    eff_rows = gamma.numel() + missing
    h = gamma.numel()
    gamma2 = gamma * gamma
    alpha = eff_rows / cols
    tau_bar = _TAU_BAR_COEF * math.sqrt(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)

    upper = (float(gamma2.sum()) + residual) / (eff_rows * cols)
    h_hat = min(math.ceil(eff_rows / (1.0 + alpha)) - 1, h) - 1
    tail = gamma2[h_hat + 1 :]
    lower = max(float(gamma2[h_hat + 1]) / (cols * x_bar), float(tail.mean()) / cols) if tail.numel() else 0.0
    lower = max(lower, upper * 1e-12)  # a zero lower bound would put log(0) in the objective
    if lower >= upper:
        sigma2 = upper
    else:
        sigma2 = _minimise_log_interval(
            lambda s2: _free_energy(s2, gamma2, eff_rows, cols, residual, x_bar), lower, upper
        )
    threshold = math.sqrt(cols * sigma2 * (1.0 + tau_bar) * (1.0 + alpha / tau_bar))
    rank = int((gamma > threshold).sum())
    return max(1, min(rank, rows))


def _minimise_log_interval(objective, lower: float, upper: float, *, grid: int = 256, zooms: int = 4) -> float:
    """Minimise a 1-D function on [lower, upper] by log-spaced grid searches that zoom in on the best point.

    A grid makes the search robust to the shallow local minima the free energy can have near the bounds,
    where a bracketing method may stall; each zoom re-grids the two cells around the best point, so
    four rounds pin log σ² to (2/255)⁴ of the starting interval with one vectorised call per round
    (a golden-section refinement needed ~60 scalar calls, most of EVBMF's run time).
    """
    a, b = math.log(lower), math.log(upper)
    best_val, best_x = float("inf"), math.log(upper)
    for _ in range(zooms):
        xs = torch.linspace(a, b, grid, dtype=torch.float64)
        vals = objective(torch.exp(xs))
        vals = torch.where(torch.isfinite(vals), vals, torch.full_like(vals, float("inf")))
        i = int(torch.argmin(vals))
        if float(vals[i]) <= best_val:
            best_val, best_x = float(vals[i]), float(xs[i])
        a, b = float(xs[max(i - 1, 0)]), float(xs[min(i + 1, grid - 1)])
    return math.exp(best_x)


def evbmf_rank(matrix: Tensor) -> int:
    """EVBMF rank of a matrix of any orientation (transposed internally so rows ≤ cols).

    Args:
        matrix: shape (L, M).

    Returns:
        Estimated rank in [1, min(L, M)].
    """
    if matrix.ndim != 2:
        raise ValueError(f"evbmf_rank expects a matrix, got shape {tuple(matrix.shape)}")
    return evbmf_rank_from_values(singular_values(matrix), tuple(matrix.shape), dtype=matrix.dtype)
