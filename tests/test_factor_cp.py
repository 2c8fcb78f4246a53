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
    assert f.rel_error(x) <= 1e-9  # float64 ALS reaches the planted tensor to ~1e-12
    assert f.errors[-1] == pytest.approx(f.rel_error(x), abs=1e-12)
    assert f.rank == rank and f.shape == shape
    assert f.n_params == rank * sum(shape)
    assert f.weights.dtype == torch.float64 and all(u.dtype == torch.float64 for u in f.factors)
    assert torch.all(f.weights[:-1] >= f.weights[1:])  # sorted descending
    for u in f.factors:
        assert torch.allclose(torch.linalg.vector_norm(u, dim=0), torch.ones(rank, dtype=torch.float64), rtol=0.0,
                              atol=1e-12)


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
        assert long.errors[k - 1] == pytest.approx(short.rel_error(x), abs=1e-12)


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
        assert torch.allclose(dense, f.reconstruct(), rtol=0.0, atol=1e-12)
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


def _noisy(x, level, seed):
    return x + level * x.std() * torch.randn(x.shape, generator=_gen(seed), dtype=x.dtype)


@pytest.mark.parametrize(("shape", "rank", "seed", "noise"), [
    ((24, 16, 5, 5), 5, 0, 0.0), ((24, 16, 5, 5), 5, 1, 0.0),  # exact (up to float32 rounding)
    ((16, 12, 3, 3), 3, 1, 1e-3), ((16, 12, 3, 3), 3, 3, 1e-3),  # exact plus 0.1% noise
])
def test_float32_converged_fit_stops_early(shape, rank, seed, noise):
    # In float32 the tracked error carries rounding noise far above tol=1e-8, so a tol-only test runs
    # every sweep; the dtype-aware test stops once the fit is as good as float32 can tell.
    x = _noisy(_planted(shape, rank, seed).float(), noise, seed + 10)
    f = cp_als(x, rank, iters=300)
    assert len(f.errors) < 100
    assert f.rel_error(x) <= max(2 * noise, 1e-5)  # the fit reached the noise level / float32 rounding
    g = cp_als(x, rank, iters=300, tol=0.0)  # tol 0 still runs every sweep
    assert len(g.errors) == 300


def test_float64_exact_fit_stops_early_at_machine_precision():
    x = _planted((16, 12, 3, 3), 3, 0)
    f = cp_als(x, 3, iters=500, tol=1e-14)
    assert len(f.errors) < 100 and f.rel_error(x) < 1e-11


def _border_rank(n, order, seed):
    """Σ over positions of a∘…∘b∘…∘a (b in one slot): rank `order`, but a limit of rank-2 tensors."""
    g = _gen(seed)
    a, b = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    out = torch.zeros((n,) * order, dtype=torch.float64)
    for slot in range(order):
        term = torch.ones((), dtype=torch.float64)
        for k in range(order):
            term = torch.tensordot(term, b if k == slot else a, dims=0)
        out = out + term
    return out


@pytest.mark.parametrize(("n", "order", "seed"), [(3, 3, 1), (5, 3, 2), (4, 4, 0), (6, 4, 1)])
def test_degenerate_rank_two_fit_of_border_rank_tensor_is_detected(n, order, seed):
    x = _border_rank(n, order, seed)
    with pytest.raises(DecompositionError, match=r"degenerate.*rank 2.*congruence -0\.9.*lower rank") as info:
        cp_als(x, 2, iters=2000)
    assert info.value.exit_code == 2
    assert cp_als(x, order, iters=2000).rel_error(x) < 1e-6  # at its true rank (order) it is well-posed


def test_swamp_after_random_start_is_not_called_degenerate():
    # A random start puts this exact rank-2 tensor in a swamp: a cancelling pair with norms ~3.6‖X‖ for
    # ~200 sweeps. The norms shrink as ALS escapes, so it is not a divergence and must reach the solution.
    x = _planted((32, 64, 3, 3), 2, 0)
    f = cp_als(x, 2, iters=2000, init="random")
    assert f.rel_error(x) < 1e-6
