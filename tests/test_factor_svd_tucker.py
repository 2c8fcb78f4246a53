"""SVD, partial Tucker (HOSVD/HOOI) and EVBMF: exactness, optimality and agreement with tensorly."""

import math

import pytest
import torch

from tdexport.factor._spectral import mode_spectrum, unfold
from tdexport.factor.evbmf import evbmf_rank, evbmf_rank_from_values
from tdexport.factor.svd import SVDFactors, truncated_svd
from tdexport.factor.tucker import TuckerFactors, partial_tucker, tucker2


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(40, 25), (25, 40), (64, 64)])
def test_truncated_svd_is_eckart_young_optimal(shape):
    m = torch.randn(*shape, generator=_gen(), dtype=torch.float64)
    ref = torch.linalg.svdvals(m)
    full = truncated_svd(m, min(shape))
    assert torch.allclose(full.s, ref, rtol=1e-10, atol=0.0)  # Gram route: small values lose ~κ²·eps
    assert full.rel_error(m) < 1e-12
    for r in (1, 5, 17):
        f = truncated_svd(m, r)
        expected = math.sqrt(float((ref[r:] ** 2).sum() / (ref**2).sum()))
        assert f.rel_error(m) == pytest.approx(expected, rel=1e-9)
        assert torch.allclose(f.u.T @ f.u, torch.eye(r, dtype=torch.float64), rtol=0.0, atol=1e-12)
        assert f.n_params == r * sum(shape)


def test_truncated_svd_handles_rank_deficiency_and_float32_and_determinism():
    a = torch.randn(30, 3, generator=_gen(1)) @ torch.randn(3, 50, generator=_gen(2))
    f = truncated_svd(a, 10)  # 7 of the 10 singular values are ~0
    assert torch.isfinite(f.u).all() and torch.isfinite(f.vh).all()
    assert f.rel_error(a) < 1e-5
    assert f.u.dtype == torch.float32
    g = truncated_svd(a, 10)
    assert torch.equal(f.u, g.u) and torch.equal(f.vh, g.vh)


def test_svd_validation():
    with pytest.raises(ValueError, match="rank 0"):
        truncated_svd(torch.ones(3, 4), 0)
    with pytest.raises(ValueError, match="do not agree"):
        SVDFactors(torch.ones(3, 2), torch.ones(3), torch.ones(2, 4))


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (8, 16, 3, 5), (12, 3, 7, 7)])
def test_tucker2_full_rank_is_exact(shape):
    w = torch.randn(*shape, generator=_gen(), dtype=torch.float64)
    f = tucker2(w, (shape[0], shape[1]), iters=2)
    assert f.core.shape == shape
    assert f.rel_error(w) < 1e-12
    assert f.ranks == (shape[0], shape[1])


def test_hooi_never_worse_than_hosvd_and_errors_are_consistent():
    w = torch.randn(32, 24, 3, 3, generator=_gen(3), dtype=torch.float64)
    hosvd = tucker2(w, (8, 6), iters=0)
    hooi = tucker2(w, (8, 6), iters=50, tol=0.0)
    assert all(b <= a + 1e-12 for a, b in zip(hooi.errors, hooi.errors[1:], strict=False))
    assert hooi.errors[-1] < hosvd.errors[-1]
    # the cheap error bookkeeping equals the error of the dense reconstruction
    assert hooi.errors[-1] == pytest.approx(hooi.rel_error(w), rel=1e-9)
    assert hosvd.errors[-1] == pytest.approx(hosvd.rel_error(w), rel=1e-9)
    for factor in hooi.factors:
        assert torch.allclose(factor.T @ factor, torch.eye(factor.shape[1], dtype=torch.float64), rtol=0.0,
                              atol=1e-12)


def test_partial_tucker_other_modes_and_spectra_reuse():
    x = torch.randn(6, 7, 8, generator=_gen(4), dtype=torch.float64)
    spec = mode_spectrum(x, 2)
    a = partial_tucker(x, (2, 0), (3, 4), iters=3, spectra=[spec, None])
    b = partial_tucker(x, (2, 0), (3, 4), iters=3)
    assert a.core.shape == (4, 7, 3)
    assert torch.equal(a.core, b.core)
    assert a.n_params == 4 * 7 * 3 + 8 * 3 + 6 * 4
    with pytest.raises(ValueError, match="rank 9"):
        partial_tucker(x, (0,), (9,))
    with pytest.raises(ValueError, match="does not fit"):
        TuckerFactors(torch.ones(2, 3), (torch.ones(5, 4),), (0,))


def test_tucker2_error_not_worse_than_tensorly_hooi():
    from tdexport.factor.reference import tensorly_partial_tucker

    g = _gen(5)
    low = torch.einsum("ar,br,hwr->abhw", torch.randn(48, 10, generator=g), torch.randn(40, 10, generator=g),
                       torch.randn(3, 3, 10, generator=g))
    w = (low + 0.3 * torch.randn(48, 40, 3, 3, generator=g)).float()
    ours = tucker2(w, (12, 10), iters=5)
    core, factors = tensorly_partial_tucker(w, (0, 1), (12, 10))
    theirs = torch.linalg.vector_norm(w.double() - torch.einsum(
        "abhw,oa,ib->oihw", core.double(), factors[0].double(), factors[1].double())
    ) / torch.linalg.vector_norm(w.double())
    assert ours.rel_error(w) <= float(theirs) + 1e-6


@pytest.mark.parametrize("rows,cols,rank", [(64, 576, 10), (576, 64, 7), (200, 200, 25), (512, 2048, 60)])
def test_evbmf_recovers_planted_rank(rows, cols, rank):
    g = _gen(rows + rank)
    signal = torch.randn(rows, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, cols, generator=g, dtype=torch.float64)
    noisy = signal / signal.std() + 0.1 * torch.randn(rows, cols, generator=g, dtype=torch.float64)
    assert evbmf_rank(noisy) == rank


def test_evbmf_guards():
    assert evbmf_rank(torch.zeros(5, 9)) == 1  # never rank 0
    noise = torch.randn(50, 400, generator=_gen(7), dtype=torch.float64)
    assert evbmf_rank(noise) == 1  # pure noise: nothing above the threshold, clamped to 1
    # Tiny matrices (3 × 400, either orientation): with unit noise the bulk sits near √400 = 20, so
    # spikes well above it count and values at the bulk do not.
    for shape in ((3, 400), (400, 3)):
        assert evbmf_rank_from_values(torch.tensor([200.0, 21.0, 20.0]), shape) == 1
        assert evbmf_rank_from_values(torch.tensor([200.0, 150.0, 20.0]), shape) == 2
        assert evbmf_rank_from_values(torch.tensor([20.0, 150.0, 200.0]), shape) == 2  # any order
    g = _gen(8)
    for k in (1, 2):  # the same through a real 3 × 400 matrix with a planted rank-k signal
        signal = torch.randn(3, k, generator=g, dtype=torch.float64) @ torch.randn(k, 400, generator=g,
                                                                                  dtype=torch.float64)
        assert evbmf_rank(torch.randn(3, 400, generator=g, dtype=torch.float64) + 3 * signal) == k


def test_unfold_layout():
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert unfold(x, 1).shape == (3, 8)
    assert torch.equal(unfold(x, 1)[1], x[:, 1, :].reshape(-1))


def test_tt_svd_exact_and_conv_special_form():
    from tdexport.factor.tt import tt_conv, tt_svd

    g = torch.Generator().manual_seed(3)
    cores = [torch.randn(1, 6, 3, generator=g, dtype=torch.float64), torch.randn(3, 5, 4, generator=g,
             dtype=torch.float64), torch.randn(4, 7, 1, generator=g, dtype=torch.float64)]
    from tdexport.factor.tt import TTFactors

    x = TTFactors(tuple(cores)).reconstruct()
    assert x.shape == (6, 5, 7)
    f = tt_svd(x, (3, 4))
    assert f.ranks == (3, 4) and f.rel_error(x) < 1e-12
    assert f.n_params == 6 * 3 + 3 * 5 * 4 + 4 * 7
    w = torch.randn(12, 10, 3, 3, generator=g, dtype=torch.float64)
    full = tt_conv(w, (12, 10))
    assert full.errors[-1] < 1e-12 and full.core.shape == (12, 10, 3, 3)
    trunc = tt_conv(w, (6, 5))
    assert 0.1 < trunc.errors[-1] < 1.0 and trunc.factors[0].shape == (12, 6) and trunc.factors[1].shape == (10, 5)
    padded = tt_conv(w, (1, 10))  # R_b > R_a·kh·kw = 9: zero-padded to the planned width
    assert padded.core.shape == (1, 10, 3, 3) and torch.count_nonzero(padded.factors[1][:, 9]) == 0
