"""CP-ALS: exact recovery, determinism, error bookkeeping, failure modes, and agreement with tensorly."""

import pytest
import torch

from tdexport.errors import DecompositionError
from tdexport.factor import cp as cp_module
from tdexport.factor.cp import CPFactors, cp_als
from tdexport.factor.reference import tensorly_parafac, tensorly_partial_tucker
from tdexport.factor.tucker import tucker2


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _planted(shape, rank, seed=0, dtype=torch.float64):
    g = _gen(seed)
    factors = tuple(torch.randn(n, rank, generator=g, dtype=dtype) for n in shape)
    return CPFactors(torch.ones(rank, dtype=dtype), factors).reconstruct()


@pytest.mark.parametrize(
    ("shape", "rank"), [((16, 12, 3, 3), 5), ((8, 6, 3, 5), 4), ((10, 9, 8), 3), ((5, 4, 3, 3, 2), 3)]
)
def test_recovers_planted_rank(shape, rank):
    x = _planted(shape, rank)
    f = cp_als(x, rank, iters=500, tol=1e-12)
    assert f.reconstruct().shape == shape
    assert f.rel_error(x) <= 1e-4
    assert f.errors[-1] == pytest.approx(f.rel_error(x), abs=1e-12)
    assert f.rank == rank and f.shape == shape
    assert f.n_params == rank * sum(shape)
    assert f.weights.dtype == torch.float64 and all(u.dtype == torch.float64 for u in f.factors)
    assert torch.all(f.weights[:-1] >= f.weights[1:])  # sorted descending
    for u in f.factors:
        assert torch.allclose(torch.linalg.vector_norm(u, dim=0), torch.ones(rank, dtype=torch.float64))


def test_deterministic_float32_and_generator():
    x = torch.randn(32, 24, 3, 3, generator=_gen(1))
    a, b = cp_als(x, 12, iters=20), cp_als(x, 12, iters=20)
    assert a.weights.dtype == torch.float32
    assert torch.equal(a.weights, b.weights)
    assert all(torch.equal(u, v) for u, v in zip(a.factors, b.factors, strict=True))
    assert a.errors == b.errors
    # rank > kh: the padding columns come from the generator, seeded with 0 by default
    c = cp_als(x, 12, iters=20, generator=_gen(0))
    d = cp_als(x, 12, iters=20, generator=_gen(5))
    assert torch.equal(a.factors[2], c.factors[2])
    assert not torch.equal(a.factors[2], d.factors[2])
    for u in a.factors[1:]:  # sign convention: largest-magnitude entry of each column positive
        assert torch.all(u.gather(0, u.abs().argmax(0, keepdim=True)) > 0)


@pytest.mark.parametrize("init", ["svd", "random"])
def test_errors_monotone_and_decrease_with_rank(init):
    x = torch.randn(20, 16, 3, 3, generator=_gen(2), dtype=torch.float64)
    finals = []
    for rank in (2, 4, 8, 16):
        f = cp_als(x, rank, iters=60, tol=0.0, init=init)
        assert len(f.errors) == 60
        assert all(b <= a + 1e-9 for a, b in zip(f.errors, f.errors[1:], strict=False))
        finals.append(f.errors[-1])
    assert all(b < a for a, b in zip(finals, finals[1:], strict=False))


@pytest.mark.parametrize("shape", [(12, 10, 3, 3), (9, 8, 7)])
def test_tracked_error_matches_dense_error(shape):
    x = torch.randn(*shape, generator=_gen(3), dtype=torch.float64)
    long = cp_als(x, 6, iters=8, tol=0.0)
    for k in (3, 7):  # same start, so the first k sweeps of the long run are the short run
        short = cp_als(x, 6, iters=k, tol=0.0)
        assert long.errors[k - 1] == pytest.approx(short.rel_error(x), abs=1e-10)


def test_callback_and_tol_stop_early():
    x = torch.randn(12, 10, 3, 3, generator=_gen(4), dtype=torch.float64)
    seen = []

    def cb(sweep, err):
        seen.append((sweep, err))
        return sweep == 2

    f = cp_als(x, 5, iters=50, callback=cb)
    assert len(f.errors) == 3 and [s for s, _ in seen] == [0, 1, 2]
    assert cp_als(_planted((8, 6, 3, 3), 2), 2, iters=500, tol=1e-6).errors.__len__() < 500


def test_failures_raise_decomposition_error(monkeypatch):
    x = torch.randn(8, 6, 3, 3, generator=_gen(5))
    x[1, 2, 0, 0] = float("nan")
    with pytest.raises(DecompositionError, match=r"\(8, 6, 3, 3\) at rank 4"):
        cp_als(x, 4)
    monkeypatch.setattr(cp_module, "_solve", lambda gram, m: torch.full_like(m, float("inf")))
    with pytest.raises(DecompositionError, match="diverged.*rank 4.*lower rank or the tucker format"):
        cp_als(torch.randn(8, 6, 3, 3, generator=_gen(5)), 4)


def test_argument_validation_and_zero_tensor():
    with pytest.raises(ValueError, match="≥ 3 modes"):
        cp_als(torch.ones(4, 5), 2)
    with pytest.raises(ValueError, match="rank"):
        cp_als(torch.ones(4, 5, 3), 0)
    with pytest.raises(ValueError, match="init"):
        cp_als(torch.ones(4, 5, 3), 2, init="hosvd")
    z = cp_als(torch.zeros(4, 5, 3, 3), 2)
    assert torch.count_nonzero(z.reconstruct()) == 0


def test_cpfactors_validation_and_absorb():
    with pytest.raises(ValueError, match=r"\(4, 2\).*3 columns"):
        CPFactors(torch.ones(3), (torch.ones(5, 3), torch.ones(4, 2)))
    with pytest.raises(ValueError, match="weights"):
        CPFactors(torch.ones(3, 1), (torch.ones(5, 3),))
    f = cp_als(torch.randn(6, 5, 3, 3, generator=_gen(6), dtype=torch.float64), 3, iters=10)
    with pytest.raises(ValueError, match="does not match"):
        f.rel_error(torch.ones(6, 5, 3))
    for mode in range(4):
        absorbed = f.absorb_weights(mode)
        dense = CPFactors(torch.ones(3, dtype=torch.float64), absorbed).reconstruct()
        assert torch.allclose(dense, f.reconstruct(), atol=1e-12)
        assert all(torch.equal(u, v) for k, (u, v) in enumerate(zip(absorbed, f.factors, strict=True)) if k != mode)
    with pytest.raises(ValueError, match="mode 4"):
        f.absorb_weights(4)


def test_not_worse_than_tensorly():
    # An i.i.d. kernel, as a freshly initialised conv: ALS has no planted optimum to miss here, so the
    # comparison measures the algorithm, not the luck of the random columns padding R > kh.
    shape = (48, 48, 3, 3)
    x = torch.randn(*shape, generator=_gen(7), dtype=torch.float64)
    ours = cp_als(x, 24, iters=50)
    weights, factors = tensorly_parafac(x, 24, n_iter_max=50, init="svd")
    theirs = CPFactors(weights, factors)
    assert theirs.reconstruct().shape == shape and weights.dtype == torch.float64
    assert ours.rel_error(x) <= theirs.rel_error(x)


@pytest.mark.slow
def test_not_worse_than_tensorly_on_kaiming_kernel():
    x = torch.randn(128, 128, 3, 3, generator=_gen(9)) * (2 / (128 * 9)) ** 0.5
    ours = cp_als(x, 64, iters=100)
    theirs = CPFactors(*tensorly_parafac(x, 64, n_iter_max=100, init="svd"))
    assert ours.rel_error(x) <= theirs.rel_error(x)


def test_reference_partial_tucker():
    x = torch.randn(24, 16, 3, 3, generator=_gen(10), dtype=torch.float64)
    core, (u_out, u_in) = tensorly_partial_tucker(x, (0, 1), (8, 6), n_iter_max=20)
    assert core.shape == (8, 6, 3, 3) and u_out.shape == (24, 8) and u_in.shape == (16, 6)
    dense = torch.einsum("abhw,oa,ib->oihw", core, u_out, u_in)
    err = float(torch.linalg.vector_norm(x - dense) / torch.linalg.vector_norm(x))
    ours = tucker2(x, (8, 6), iters=20).rel_error(x)
    assert 0.0 < err < 1.0
    assert ours <= err + 1e-12  # tensorly may stop earlier on its own tolerance; HOOI never gets worse
    core5, (a5, b5) = tensorly_partial_tucker(x, (0, 1), (8, 6), n_iter_max=5)
    dense5 = torch.einsum("abhw,oa,ib->oihw", core5, a5, b5)
    err5 = float(torch.linalg.vector_norm(x - dense5) / torch.linalg.vector_norm(x))
    assert tucker2(x, (8, 6), iters=5).rel_error(x) == pytest.approx(err5, rel=1e-9)
