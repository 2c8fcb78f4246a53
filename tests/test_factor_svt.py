"""SVT rank rule: one threshold for both channel modes, hitting the approximation ratio ‖Ŵ‖/‖W‖, never rank 0."""

import math

import pytest
import torch

from tdexport.factor._spectral import mode_spectrum
from tdexport.factor.svt import svt_ranks, svt_ratio
from tdexport.factor.tucker import tucker2


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _random(seed=0):
    return torch.randn(64, 48, 3, 3, generator=_gen(seed), dtype=torch.float64)


def _low_rank_ish(seed=1):
    """A rank-(16, 12) Tucker-2 kernel plus 30 % noise: a few large singular values over a flat floor."""
    g = _gen(seed)
    core = torch.randn(16, 12, 3, 3, generator=g, dtype=torch.float64)
    w = torch.einsum("abhw,oa,ib->oihw", core, torch.randn(64, 16, generator=g, dtype=torch.float64),
                     torch.randn(48, 12, generator=g, dtype=torch.float64))
    return w + 0.3 * w.std() * torch.randn(w.shape, generator=g, dtype=torch.float64)


def _power_law(seed=2):
    """Singular values decaying like k^-1 (mode 0) and k^-0.7 (mode 1), in random bases."""
    g = _gen(seed)
    w = torch.randn(64, 48, 3, 3, generator=g, dtype=torch.float64)
    w = w * torch.arange(1, 65.0, dtype=torch.float64)[:, None, None, None] ** -1.0
    w = w * torch.arange(1, 49.0, dtype=torch.float64)[None, :, None, None] ** -0.7
    u = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(48, 48, generator=g, dtype=torch.float64))[0]
    return torch.einsum("oihw,po,qi->pqhw", w, u, v)


def _spectra(w):
    return mode_spectrum(w, 0).values, mode_spectrum(w, 1).values


def _exact_ratio(w):
    """The seed's ratio: ‖Ŵ‖/‖W‖ for the Tucker-2 (HOSVD) reconstruction Ŵ."""
    return lambda r0, r1: float(tucker2(w, (r0, r1)).reconstruct().norm() / w.norm())


def test_the_ratio_is_the_norm_of_an_orthogonal_projection():
    w = _random()
    f = tucker2(w, (20, 16), iters=3)
    ratio = float(f.reconstruct().norm() / w.norm())
    assert ratio == pytest.approx(math.sqrt(1 - f.rel_error(w) ** 2), rel=1e-12)  # R² = 1 − err²


HITS = ([(_random, t) for t in (0.3, 0.5, 0.79, 0.9, 0.95, 0.99)]
        + [(_low_rank_ish, t) for t in (0.7, 0.79, 0.9, 0.95, 0.99)]
        + [(_power_law, t) for t in (0.79, 0.9, 0.95, 0.99)])


@pytest.mark.parametrize(("make", "target"), HITS)
def test_hits_the_target_ratio(make, target):
    w = make()
    s0, s1 = _spectra(w)
    r0, r1, tau = svt_ranks(s0, s1, target)
    assert abs(svt_ratio(s0, s1, r0, r1) - target) < 0.01
    assert r0 == max(1, int((s0 > tau).sum())) and r1 == max(1, int((s1 > tau).sum()))


@pytest.mark.parametrize("make", [_random, _low_rank_ish, _power_law])
def test_is_the_closest_point_of_the_single_threshold_path(make):
    """Bisection finds what a scan over every candidate threshold finds (targets the path cannot hit included)."""
    s0, s1 = _spectra(make())
    path = {(max(1, int((s0 > t).sum())), max(1, int((s1 > t).sum())))
            for t in [0.0, *torch.cat([s0, s1]).tolist()]}
    for target in torch.linspace(0.05, 1.0, 40).tolist():
        best = min(abs(svt_ratio(s0, s1, *rr) - target) for rr in path)
        r0, r1, _ = svt_ranks(s0, s1, target)
        assert abs(svt_ratio(s0, s1, r0, r1) - target) <= best + 1e-12


def test_coarse_spectra_return_the_nearest_reachable_ratio():
    # one threshold couples the two ranks, so a steep spectrum cannot reach every ratio:
    s0, s1 = _spectra(_power_law())
    assert svt_ratio(s0, s1, 1, 1) == pytest.approx(0.5159, abs=1e-4)  # the smallest reachable ratio
    assert svt_ranks(s0, s1, 0.5)[:2] == (1, 1)
    s0, s1 = _spectra(_low_rank_ish())
    r0, r1, _ = svt_ranks(s0, s1, 0.5)  # the path steps from (3, 5) at 0.473 to (4, 5) at 0.526
    assert (r0, r1) == (4, 5) and svt_ratio(s0, s1, r0, r1) == pytest.approx(0.5262, abs=1e-4)
    assert svt_ratio(s0, s1, 3, 5) == pytest.approx(0.4734, abs=1e-4)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.79, 0.9, 0.99])
def test_hits_the_exact_ratio_with_a_reconstruction(target):
    w = _random(3)
    s0, s1 = _spectra(w)
    exact = _exact_ratio(w)
    calls = []

    def counted(r0, r1):
        calls.append((r0, r1))
        return exact(r0, r1)

    r0, r1, _ = svt_ranks(s0, s1, target, norm_ratio=counted)
    assert abs(exact(r0, r1) - target) < 0.01
    k = len(torch.unique(torch.cat([s0, s1])))
    assert len(calls) <= math.ceil(math.log2(k + 1)) + 2  # bisection, not a scan


def test_estimate_is_close_to_the_exact_ratio_and_within_hosvd_bounds():
    for make in (_random, _low_rank_ish, _power_law):
        w = make()
        s0, s1 = _spectra(w)
        e = float((w * w).sum())
        exact = _exact_ratio(w)
        for r0, r1 in [(8, 8), (16, 12), (32, 24), (48, 40), (60, 8), (8, 44)]:
            t0, t1 = float((s0[r0:] ** 2).sum()) / e, float((s1[r1:] ** 2).sum()) / e
            est = svt_ratio(s0, s1, r0, r1)
            assert math.sqrt(max(0.0, 1 - t0 - t1)) - 1e-12 <= est <= math.sqrt(1 - max(t0, t1)) + 1e-12
            assert abs(est - exact(r0, r1)) < 0.03  # measured ≤ 0.025


def test_never_rank_zero_and_full_at_ratio_one():
    s0, s1 = _spectra(_random())
    assert svt_ranks(s0, s1, 1e-6)[:2] == (1, 1)
    assert svt_ranks(s0, s1, 1.0) == (64, 48, 0.0)
    # a dominant value: every small target lands on rank 1, never 0
    d0 = torch.tensor([100.0, 1.0, 1.0])
    d1 = torch.tensor([100.0, 1.0, 1.0])
    assert svt_ranks(d0, d1, 0.2)[:2] == (1, 1)
    # zero singular values carry no energy: ratio 1 stops at the non-zero ones
    z0, z1 = torch.tensor([3.0, 2.0, 0.0, 0.0]), torch.tensor([2.0, 3.0, 0.0])
    assert svt_ranks(z0, z1, 1.0)[:2] == (2, 2)


def test_ranks_grow_with_the_target():
    s0, s1 = _spectra(_power_law())
    prev = (0, 0)
    for target in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999):
        r0, r1, _ = svt_ranks(s0, s1, target)
        assert r0 >= prev[0] and r1 >= prev[1]
        prev = (r0, r1)


def test_order_of_the_values_does_not_matter():
    s0, s1 = _spectra(_random())
    assert svt_ranks(s0, s1, 0.8) == svt_ranks(s0.flip(0), s1[torch.randperm(48, generator=_gen())], 0.8)
    assert svt_ranks(s0.tolist(), s1.tolist(), 0.8) == svt_ranks(s0, s1, 0.8)


def test_validation():
    s0, s1 = _spectra(_random())
    for ratio in (0.0, -0.5, 1.01, float("nan"), True):
        with pytest.raises(ValueError, match="ratio"):
            svt_ranks(s0, s1, ratio)
    with pytest.raises(ValueError, match="different energies"):
        svt_ranks(s0, s1[:10], 0.8)
    with pytest.raises(ValueError, match="finite and ≥ 0"):
        svt_ranks(-s0, -s1, 0.8)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        svt_ranks(torch.tensor([]), s1, 0.8)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        svt_ranks(s0[:, None], s1, 0.8)
    with pytest.raises(ValueError, match="all zero"):
        svt_ranks(torch.zeros(4), torch.zeros(3), 0.8)
    with pytest.raises(ValueError, match="outside"):
        svt_ratio(s0, s1, 0, 4)
    with pytest.raises(ValueError, match="outside"):
        svt_ratio(s0, s1, 4, 49)
