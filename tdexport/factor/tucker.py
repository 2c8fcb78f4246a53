"""Partial Tucker decomposition on chosen modes: HOSVD start, optional HOOI refinement.

For a conv kernel W (O, I, kh, kw), Tucker-2 on modes (0, 1) gives
W ≈ core ×₀ U_out ×₁ U_in with core (R_out, R_in, kh, kw), U_out (O, R_out), U_in (I, R_in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._spectral import Spectrum, mode_product, mode_spectrum, relative_error, row_spectrum, unfold

__all__ = ["TuckerFactors", "partial_tucker", "tucker2"]


@dataclass(frozen=True)
class TuckerFactors:
    """Partial Tucker factors.

    Attributes:
        core: tensor whose axis ``modes[k]`` has size ``factors[k].shape[1]``; other axes as the input.
        factors: one matrix per decomposed mode, shape (mode size, rank), orthonormal columns.
        modes: the decomposed axes, in the order of ``factors``.
        errors: relative error after the HOSVD start and after each HOOI sweep.
    """

    core: Tensor
    factors: tuple[Tensor, ...]
    modes: tuple[int, ...]
    errors: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.factors) != len(self.modes):
            raise ValueError(f"{len(self.factors)} factors for {len(self.modes)} modes {self.modes}")
        for f, m in zip(self.factors, self.modes, strict=True):
            if f.ndim != 2 or m >= self.core.ndim or f.shape[1] != self.core.shape[m]:
                raise ValueError(
                    f"factor {tuple(f.shape)} does not fit core {tuple(self.core.shape)} on mode {m}"
                )

    @property
    def ranks(self) -> tuple[int, ...]:
        """Rank of each decomposed mode, in ``modes`` order."""
        return tuple(int(f.shape[1]) for f in self.factors)

    @property
    def n_params(self) -> int:
        """Elements in the core plus all factor matrices."""
        return self.core.numel() + sum(f.numel() for f in self.factors)

    def reconstruct(self) -> Tensor:
        """Dense tensor core ×ₘ Uₘ over the decomposed modes."""
        out = self.core
        for f, m in zip(self.factors, self.modes, strict=True):
            out = mode_product(out, f, m)
        return out

    def rel_error(self, tensor: Tensor) -> float:
        """Relative Frobenius error of the reconstruction against ``tensor``."""
        return relative_error(tensor, self.reconstruct())


def _leading(spec: Spectrum, rank: int, *, reorthonormalize: bool = False) -> Tensor:
    """First ``rank`` eigenvectors with a deterministic sign (largest-magnitude entry positive).

    ``reorthonormalize`` re-orthonormalizes them in float64 (QR), for vectors from a float32 eigh whose
    ~1e-7 loss of orthogonality would otherwise bias the error computed from the core's norm.
    """
    u = spec.vectors[:, :rank]
    if reorthonormalize:
        u = torch.linalg.qr(u.to(torch.float64))[0]
    signs = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True))).squeeze(0)
    signs[signs == 0] = 1.0
    return u * signs


def _project_all_but(tensor: Tensor, factors: list[Tensor], modes: Sequence[int], skip: int | None) -> Tensor:
    out = tensor
    for k, (f, m) in enumerate(zip(factors, modes, strict=True)):
        if k != skip:
            out = mode_product(out, f.T, m)
    return out


def partial_tucker(
    tensor: Tensor,
    modes: Sequence[int],
    ranks: Sequence[int],
    *,
    iters: int = 0,
    tol: float = 1e-4,
    spectra: Sequence[Spectrum | None] | None = None,
) -> TuckerFactors:
    """Partial Tucker decomposition by truncated HOSVD, refined by up to ``iters`` HOOI sweeps.

    Everything runs in float64 (the kernels are small; accuracy of the subspaces matters more than
    speed there), and the factors come back in the input's dtype. HOOI never increases the error, so
    the sweeps stop when it improves by less than ``tol`` (relative error units).

    Args:
        tensor: N-way tensor, e.g. a conv kernel (O, I, kh, kw).
        modes: axes to decompose, e.g. (0, 1).
        ranks: one rank per mode, each in [1, tensor.shape[mode]].
        iters: maximum HOOI sweeps after the HOSVD start (0: plain HOSVD).
        tol: stop when a sweep lowers the relative error by less than this.
        spectra: optional precomputed `mode_spectrum` per mode (None entries are computed), so a
            rank rule that already needed them does not pay for a second eigendecomposition.

    Returns:
        `TuckerFactors` with ``errors`` holding the error after HOSVD and after each sweep.
    """
    modes, ranks = tuple(int(m) for m in modes), tuple(int(r) for r in ranks)
    if len(modes) != len(ranks) or len(set(modes)) != len(modes):
        raise ValueError(f"modes {modes} and ranks {ranks} must pair up, one rank per distinct mode")
    for m, r in zip(modes, ranks, strict=True):
        if not 0 <= m < tensor.ndim:
            raise ValueError(f"mode {m} is outside a {tensor.ndim}-way tensor of shape {tuple(tensor.shape)}")
        if not 1 <= r <= tensor.shape[m]:
            raise ValueError(f"rank {r} is outside [1, {tensor.shape[m]}] for mode {m} of {tuple(tensor.shape)}")
    x = tensor.detach().to(torch.float64)
    spectra = list(spectra) if spectra is not None else [None] * len(modes)
    factors = [
        _leading(s if s is not None else mode_spectrum(x, m), r)
        for s, m, r in zip(spectra, modes, ranks, strict=True)
    ]
    norm2 = float((x * x).sum())

    def error_of(core: Tensor) -> float:
        # With orthonormal factors ‖X − X̂‖² = ‖X‖² − ‖core‖², so no dense reconstruction is needed.
        c = core.to(torch.float64)
        return max(norm2 - float((c * c).sum()), 0.0) ** 0.5 / norm2**0.5 if norm2 > 0 else 0.0

    errors = [error_of(_project_all_but(x, factors, modes, None))]
    # Sweeps only need the dominant subspaces, so they run in the working precision (float32 for
    # float32 weights, about twice as fast, eigendecompositions included); the final core is float64.
    work = tensor.detach() if tensor.dtype in (torch.float32, torch.float64) else x
    for _ in range(iters):
        for k, (m, r) in enumerate(zip(modes, ranks, strict=True)):
            partial = _project_all_but(work, factors, modes, k)
            spec = row_spectrum(unfold(partial, m), gram_dtype=work.dtype, eigh_dtype=work.dtype)
            factors[k] = _leading(spec, r, reorthonormalize=True)
        errors.append(error_of(mode_product(partial, factors[-1].T, modes[-1])))
        if errors[-2] - errors[-1] < tol:
            break
    core = _project_all_but(x, factors, modes, None)
    if iters:
        errors[-1] = error_of(core)
    dt = tensor.dtype
    return TuckerFactors(
        core=core.to(dt), factors=tuple(f.to(dt) for f in factors), modes=modes, errors=tuple(errors)
    )


def tucker2(
    weight: Tensor, ranks: tuple[int, int], *, iters: int = 0, tol: float = 1e-4,
    spectra: Sequence[Spectrum | None] | None = None,
) -> TuckerFactors:
    """Tucker-2 of a conv kernel over its channel modes.

    Args:
        weight: conv kernel (O, I, kh, kw).
        ranks: (R_out, R_in).
        iters: maximum HOOI sweeps, as in `partial_tucker`.
        tol: HOOI stopping tolerance, as in `partial_tucker`.
        spectra: optional precomputed spectra of modes 0 and 1, as in `partial_tucker`.

    Returns:
        `TuckerFactors` with core (R_out, R_in, kh, kw) and factors (U_out (O, R_out), U_in (I, R_in)).
    """
    if weight.ndim != 4:
        raise ValueError(f"tucker2 expects a conv kernel (O, I, kh, kw), got shape {tuple(weight.shape)}")
    return partial_tucker(weight, (0, 1), ranks, iters=iters, tol=tol, spectra=spectra)
