"""CP (CANDECOMP/PARAFAC) decomposition by alternating least squares.

A conv kernel W (O, I, kh, kw) is approximated by R rank-one terms,
W ≈ Σ_r λ_r · a_r ∘ b_r ∘ c_r ∘ d_r, with factors A (O, R), B (I, R), C (kh, R), D (kw, R).

Cost model (4-way path): one sweep needs two big contractions, each O·I·kh·kw·R multiply-adds, done
as GEMMs in the input's precision: X₍₀₎ · (B ⊙ C ⊙ D) for A, then Z = Aᵀ X₍₀₎ of shape (R, I, kh·kw),
from which the MTTKRPs of B, C and D follow by cheap batched reductions. The R×R normal equations
(Hadamard product of the other factors' Gram matrices) are solved in float64.

Degeneracy: below a tensor's typical rank the best rank-R approximation may not exist (the rank-3
tensor a∘a∘b + a∘b∘a + b∘a∘a is a limit of rank-2 tensors). ALS then creeps along a path on which two
components grow without bound in nearly opposite directions, so their sum cancels: the factors depend
on when ALS stopped, and a layer built from them adds two large, nearly cancelling partial sums, which
loses precision (fp16 in particular) and destabilises fine-tuning. `cp_als` detects this and raises
`DecompositionError` asking for a lower rank or the tucker format, rather than return such factors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import DecompositionError
from ._spectral import mode_spectrum, relative_error, unfold

__all__ = ["CPFactors", "cp_als"]

# The tracked error is ‖X‖² − 2⟨X, X̂⟩ + ‖X̂‖² built from working-precision contractions: the squared
# relative error e² is resolved to about one eps of the working dtype (measured: ≤ ~1 eps between sweeps
# once converged), so e itself only to ~eps/(2e). Changes below a few such units are rounding noise.
_RESOLUTION_EPS = 4.0
# Below e² = 256 eps (e ≈ 5.5e-3 in float32, 2.4e-7 in float64) the tracked e keeps fewer than two
# significant digits, so each sweep's error is measured on a dense reconstruction instead (one more
# contraction of the size of an MTTKRP; only near-exact fits get there).
_DENSE_BELOW_EPS = 256.0
# Degeneracy test: a pair of components both at least half as large as the whole tensor, with congruence
# (product over modes of the cosines between their factor columns) at most -0.9, while ‖λ‖ grows, on 10
# sweeps in a row. The growth condition separates a divergence from a swamp: after a poor (e.g. random)
# start ALS can sit for hundreds of sweeps with such a cancelling pair, but its norms shrink as it
# escapes towards a well-posed solution. Measured over 100 sweeps: no planted (well-posed) tensor and no
# ResNet-50 3×3 kernel at R = O/4 or O/2 trips it; the classic border-rank examples do, and so do a few
# low-rank fits of small i.i.d. tensors (7 of 840 fits, 1 from the SVD start), whose components do diverge.
_DEGENERATE_CONGRUENCE = -0.9
_DEGENERATE_NORM = 0.5
_DEGENERATE_SWEEPS = 10


def _khatri_rao(mats: list[Tensor]) -> Tensor:
    """Column-wise Kronecker product, first matrix slowest: shape (Π n_k, R), matching C-order unfoldings."""
    out = mats[0]
    for m in mats[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(-1, out.shape[1])
    return out


@dataclass(frozen=True)
class CPFactors:
    """Rank-R CP factors of an N-way tensor.

    Attributes:
        weights: component scales λ, shape (R,).
        factors: one matrix per mode, shape (n_k, R), unit-norm columns when produced by `cp_als`.
        errors: relative error after each ALS sweep (the last one from a dense reconstruction).
    """

    weights: Tensor
    factors: tuple[Tensor, ...]
    errors: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "factors", tuple(self.factors))
        object.__setattr__(self, "errors", tuple(float(e) for e in self.errors))
        shapes = [tuple(f.shape) for f in self.factors]
        if self.weights.ndim != 1 or not self.factors:
            raise ValueError(f"CP needs weights (R,) and ≥1 factor, got {tuple(self.weights.shape)}, {shapes}")
        r = self.weights.shape[0]
        if any(f.ndim != 2 or f.shape[1] != r for f in self.factors):
            raise ValueError(f"CP factor shapes {shapes} do not all have {r} columns (weights {(r,)})")

    @property
    def rank(self) -> int:
        """Number of rank-one components R."""
        return int(self.weights.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the reconstructed tensor, (n_0, …, n_{N-1})."""
        return tuple(int(f.shape[0]) for f in self.factors)

    @property
    def n_params(self) -> int:
        """Elements of all factor matrices, R·Σ n_k (weights are absorbed into a factor when building layers)."""
        return sum(f.numel() for f in self.factors)

    def absorb_weights(self, mode: int) -> tuple[Tensor, ...]:
        """Factors with λ multiplied into the columns of factor ``mode``; the others are returned as is."""
        if not -len(self.factors) <= mode < len(self.factors):
            raise ValueError(f"mode {mode} is outside a {len(self.factors)}-way CP of shape {self.shape}")
        mode %= len(self.factors)
        return tuple(f * self.weights if k == mode else f for k, f in enumerate(self.factors))

    def reconstruct(self) -> Tensor:
        """Dense tensor Σ_r λ_r a⁽⁰⁾_r ∘ … ∘ a⁽ᴺ⁻¹⁾_r, shape (n_0, …, n_{N-1})."""
        head = self.factors[0] * self.weights
        if len(self.factors) == 1:
            return head.sum(1)
        return (head @ _khatri_rao(list(self.factors[1:])).T).reshape(self.shape)

    def rel_error(self, tensor: Tensor) -> float:
        """Relative Frobenius error of the reconstruction against ``tensor``."""
        if tuple(tensor.shape) != self.shape:
            raise ValueError(f"tensor shape {tuple(tensor.shape)} does not match CP shape {self.shape}")
        return relative_error(tensor, self.reconstruct())


def _column_signs(u: Tensor) -> Tensor:
    """±1 per column: the sign of its largest-magnitude entry (first one on ties; +1 for a zero column)."""
    signs = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True))).squeeze(0)
    return torch.where(signs == 0, torch.ones_like(signs), signs)


def _gaussian(rows: int, cols: int, gen: torch.Generator, device: torch.device) -> Tensor:
    g = torch.randn(rows, cols, generator=gen, dtype=torch.float64)  # on CPU: identical on every device
    return (g / torch.linalg.vector_norm(g, dim=0).clamp_min(1e-300)).to(device)


def _initial_factors(x: Tensor, rank: int, init: str, gen: torch.Generator) -> list[Tensor]:
    """Unit-norm float64 starting factors; mode 0 is solved first, so its start is zeros and unused."""
    factors = [torch.zeros(x.shape[0], rank, dtype=torch.float64, device=x.device)]
    for mode in range(1, x.ndim):
        n = x.shape[mode]
        if init == "random":
            factors.append(_gaussian(n, rank, gen, x.device))
            continue
        lead = mode_spectrum(x, mode).vectors[:, : min(rank, n)]
        lead = lead * _column_signs(lead)
        if rank > n:
            lead = torch.cat([lead, _gaussian(n, rank - n, gen, x.device)], dim=1)
        factors.append(lead)
    return factors


def _solve(gram: Tensor, mttkrp: Tensor) -> Tensor:
    """F = M · V⁻¹ for the symmetric R×R Hadamard Gram V: Cholesky with a tiny ridge, pinv fallback."""
    ridge = 1e-12 * float(gram.diagonal().mean().clamp_min(1e-300))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(gram + ridge * eye)
    if int(info) == 0:
        return torch.cholesky_solve(mttkrp.T, chol).T
    return mttkrp @ torch.linalg.pinv(gram, hermitian=True)


def _degenerate_pair(weights: Tensor, grams: list[Tensor], norm: float) -> tuple[int, int, float] | None:
    """The most cancelling pair of components, if two are both ≥ ½‖X‖ with congruence ≤ −0.9.

    Args:
        weights: component norms λ, float64, shape (R,).
        grams: per-mode Gram matrices of the unit-column factors, float64, shape (R, R) each; their
            Hadamard product is the congruence matrix (cosine between rank-one components).
        norm: ‖X‖_F.

    Returns:
        (r, s, congruence) of the pair, or None when no pair qualifies.
    """
    big = weights >= _DEGENERATE_NORM * norm
    if int(big.sum()) < 2:  # cheap exit, the common case: no pair can qualify
        return None
    congruence = torch.ones_like(grams[0])
    for g in grams:
        congruence = congruence * g
    pair = big[:, None] & big[None, :]
    pair.fill_diagonal_(False)
    masked = torch.where(pair, congruence, torch.ones_like(congruence))
    r, s = divmod(int(torch.argmin(masked)), masked.shape[0])
    c = float(masked[r, s])
    return (r, s, c) if c <= _DEGENERATE_CONGRUENCE else None


def cp_als(
    tensor: Tensor,
    rank: int,
    *,
    iters: int = 100,
    tol: float = 1e-8,
    init: str = "svd",
    generator: torch.Generator | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
) -> CPFactors:
    """Rank-``rank`` CP decomposition of an N-way tensor (N ≥ 3) by ALS with column normalisation.

    Each sweep updates the factors in mode order; after each update the columns are normalised and
    their norms become ``weights``. The error ‖X − X̂‖² = ‖X‖² − 2⟨X, X̂⟩ + ‖X̂‖² is tracked from the last
    mode's MTTKRP and Gram matrices, so no dense reconstruction happens inside the loop until the fit is
    so close that this cancels to fewer than two digits (e² < 256 eps of the working dtype). Big
    contractions run in the input's dtype (float32 for float32 weights; float64 inputs stay float64);
    normal equations run in float64. The result is deterministic: same input, same output bits.

    Args:
        tensor: N-way tensor, e.g. a conv kernel (O, I, kh, kw); 4-way inputs take the fast path.
        rank: number of components R ≥ 1 (may exceed any mode size).
        iters: maximum number of ALS sweeps (≥ 1).
        tol: stop when a sweep changes the relative error e by less than max(tol, resolution), the
            resolution being what the working dtype lets e be measured to: 4·eps/(2e) for the tracked
            error, 4·eps once e² < 256·eps and e comes from a dense reconstruction (in float32 a tol
            of 1e-8 alone is below the rounding noise and would never be met). 0 disables early
            stopping: all ``iters`` sweeps run (unless ``callback`` stops them).
        init: "svd" (leading left singular vectors of each unfolding, padded with seeded Gaussian
            columns where R > n_k) or "random" (seeded Gaussian).
        generator: source of the Gaussian columns; default a CPU generator seeded with 0.
        callback: called as ``callback(sweep, rel_error)`` after each sweep (0-based); returning True stops.

    Returns:
        `CPFactors` in the input's dtype and device: weights (R,) sorted descending, factors (n_k, R)
        with unit columns whose largest-magnitude entry is positive for modes ≥ 1.

    Raises:
        ValueError: bad rank, iters, init or tensor order.
        DecompositionError: non-finite input; ALS produced NaN/Inf or diverged (error > 10); or the fit
            is degenerate: for 10 sweeps in a row, two components each ≥ ½‖X‖ with congruence ≤ −0.9
            cancel each other while ‖λ‖ grows (the rank-R approximation does not exist or is
            ill-conditioned; the message asks for a lower rank or the tucker format).
    """
    shape = tuple(tensor.shape)
    if tensor.ndim < 3:
        raise ValueError(f"cp_als expects a tensor with ≥ 3 modes, got shape {shape}")
    if rank < 1 or iters < 1:
        raise ValueError(f"rank ({rank}) and iters ({iters}) must be ≥ 1 for a tensor of shape {shape}")
    if init not in ("svd", "random"):
        raise ValueError(f"init must be 'svd' or 'random', got {init!r}")
    hint = "try a lower rank or the tucker format"
    x64 = tensor.detach().to(torch.float64)
    if not bool(torch.isfinite(x64).all()):
        raise DecompositionError(f"CP of a tensor of shape {shape} at rank {rank}: input has NaN/Inf")
    norm2 = float((x64 * x64).sum())
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    f = _initial_factors(x64, rank, init, gen)
    dt = tensor.dtype
    if norm2 == 0.0:
        return CPFactors(torch.zeros(rank, dtype=dt, device=tensor.device), tuple(u.to(dt) for u in f), (0.0,))

    wd = dt if dt in (torch.float32, torch.float64) else torch.float32  # working precision of GEMMs
    n = tensor.ndim
    grams = [u.T @ u for u in f]
    weights = torch.ones(rank, dtype=torch.float64, device=tensor.device)
    fast = n == 4
    if fast:
        x0 = x64.reshape(shape[0], -1).to(wd)
    else:
        unfoldings = [unfold(x64, k).to(wd) for k in range(n)]
    errors: list[float] = []
    eps = torch.finfo(wd).eps
    prev_resolution = 0.0
    flagged, prev_lam_norm = 0, float("inf")  # consecutive sweeps with a cancelling pair and growing ‖λ‖

    def update(mode: int, mttkrp: Tensor) -> float:
        """Solve mode ``mode``, normalise it into ``weights``; return ‖X − X̂‖² if it is the last mode."""
        nonlocal weights
        v = torch.ones_like(grams[0])
        for k in range(n):
            if k != mode:
                v = v * grams[k]
        sol = _solve(v, mttkrp)
        err2 = 0.0
        if mode == n - 1:
            err2 = norm2 - 2.0 * float((mttkrp * sol).sum()) + float((v * (sol.T @ sol)).sum())
        weights = torch.linalg.vector_norm(sol, dim=0)
        f[mode] = sol / torch.where(weights > 0, weights, torch.ones_like(weights))
        grams[mode] = f[mode].T @ f[mode]
        return err2

    for sweep in range(iters):
        if fast:
            o, i, kh, kw = shape
            kr_hw = _khatri_rao([f[2], f[3]])  # (kh·kw, R)
            update(0, (x0 @ _khatri_rao([f[1], kr_hw]).to(wd)).double())
            z = (f[0].T.to(wd) @ x0).reshape(rank, i, kh * kw)  # Z = Aᵀ X₍₀₎, shared by modes 1-3
            update(1, torch.bmm(z, kr_hw.T.to(wd).unsqueeze(-1)).squeeze(-1).T.double())
            t = torch.bmm(f[1].T.to(wd).unsqueeze(1), z).reshape(rank, kh, kw).double()  # (R, kh, kw)
            update(2, torch.einsum("rhw,wr->hr", t, f[3]))
            err2 = update(3, torch.einsum("rhw,hr->wr", t, f[2]))
        else:
            for mode in range(n):
                kr = _khatri_rao([f[k] for k in range(n) if k != mode]).to(wd)
                err2 = update(mode, (unfoldings[mode] @ kr).double())
        err = max(err2, 0.0) ** 0.5 / norm2**0.5
        if not (err <= 10.0 and bool(torch.isfinite(weights).all())):
            raise DecompositionError(
                f"CP-ALS diverged on a tensor of shape {shape} at rank {rank} (sweep {sweep}: relative "
                f"error {err:.3g}); {hint}"
            )
        pair = _degenerate_pair(weights, grams, norm2**0.5)
        lam_norm = float(torch.linalg.vector_norm(weights))
        flagged = flagged + 1 if pair is not None and lam_norm > prev_lam_norm else 0
        prev_lam_norm = lam_norm
        if pair is not None and flagged >= _DEGENERATE_SWEEPS:
            r, s, c = pair
            raise DecompositionError(
                f"CP-ALS is degenerate on a tensor of shape {shape} at rank {rank} (sweep {sweep}): components "
                f"{r} and {s} have norms {float(weights[r]) / norm2**0.5:.3g}× and "
                f"{float(weights[s]) / norm2**0.5:.3g}× the tensor's and congruence {c:.3f}, so they cancel "
                f"each other and grow without converging (no best rank-{rank} approximation exists or it is "
                f"ill-conditioned); use a lower rank (e.g. {max(rank - 1, 1)}) or the tucker format"
            )
        if err * err < _DENSE_BELOW_EPS * eps:
            err = relative_error(x64, CPFactors(weights.to(wd), tuple(u.to(wd) for u in f)).reconstruct())
            resolution = _RESOLUTION_EPS * eps
        else:
            resolution = _RESOLUTION_EPS * eps / (2.0 * err)
        errors.append(err)
        if callback is not None and callback(sweep, err) is True:
            break
        # Converged: the change is below tol, or below what this dtype lets the error resolve.
        if tol > 0 and sweep > 0 and abs(errors[-2] - err) < max(tol, resolution, prev_resolution):
            break
        prev_resolution = resolution

    order = torch.argsort(weights, descending=True, stable=True)
    weights, f = weights[order], [u[:, order] for u in f]
    for k in range(1, n):  # deterministic signs: flip modes ≥ 1, compensate in mode 0
        signs = _column_signs(f[k])
        f[k], f[0] = f[k] * signs, f[0] * signs
    # The tracked error suffers cancellation in float32; the final one comes from a dense reconstruction.
    errors[-1] = relative_error(x64, CPFactors(weights.to(wd), tuple(u.to(wd) for u in f)).reconstruct())
    return CPFactors(weights.to(dt), tuple(u.to(dt) for u in f), tuple(errors))
