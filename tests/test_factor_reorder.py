"""Reordering + DCT compression: the DCT, the greedy chain (exact and blocked), exactness at r = 1, storage."""

import math

import numpy as np
import pytest
import torch

from tdexport.factor.reorder import (
    ReorderFactors,
    dct,
    dct_matrix,
    greedy_order,
    idct,
    progressive_ratio,
    reorder_compress,
    reorder_reconstruct,
    storage_ratio,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _seed_greedy(columns):
    """The seed's rule written out plainly: start at the largest norm, then nearest unvisited (O(n²))."""
    c = columns.double().numpy()
    visited = np.zeros(len(c), dtype=bool)
    cur = int(np.argmax((c**2).sum(1)))
    out = [cur]
    visited[cur] = True
    for _ in range(len(c) - 1):
        d = ((c - c[cur]) ** 2).sum(1)
        d[visited] = np.inf
        cur = int(np.argmin(d))
        out.append(cur)
        visited[cur] = True
    return np.array(out)


def _weight(shape, seed=0):
    # per-filter scales, like trained kernels, so reordering has structure to find
    w = torch.randn(*shape, generator=_gen(seed))
    return w * torch.linspace(0.1, 2.0, shape[0]).reshape(-1, *([1] * (len(shape) - 1)))


# -------------------------------------------------------------------------------------------------- DCT


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 33, 64])
def test_dct_matches_the_orthonormal_matrix(n):
    d = dct_matrix(n)
    assert torch.allclose(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-13, rtol=0)
    x = torch.randn(5, n, generator=_gen(n), dtype=torch.float64)
    assert torch.allclose(dct(x), x @ d.T, atol=1e-12, rtol=0)
    assert torch.allclose(idct(x), x @ d, atol=1e-12, rtol=0)
    assert torch.allclose(idct(dct(x)), x, atol=1e-12, rtol=0)
    assert dct(x.float()).dtype == torch.float32


def test_dct_matches_scipy():
    fft = pytest.importorskip("scipy.fft")
    x = torch.randn(3, 50, generator=_gen(1), dtype=torch.float64)
    assert np.allclose(dct(x).numpy(), fft.dct(x.numpy(), type=2, norm="ortho"), atol=1e-12, rtol=0)
    assert np.allclose(idct(x).numpy(), fft.idct(x.numpy(), type=2, norm="ortho"), atol=1e-12, rtol=0)


def test_dct_matrix_rejects_empty():
    with pytest.raises(ValueError, match="length"):
        dct_matrix(0)


# ----------------------------------------------------------------------------------------------- order


@pytest.mark.parametrize(("n", "g"), [(1, 4), (2, 3), (300, 4), (500, 8), (257, 1)])
def test_single_block_order_is_the_seed_greedy_chain(n, g):
    cols = torch.randn(n, g, generator=_gen(n))
    order = greedy_order(cols, block=1024)
    assert order.dtype == torch.int64
    assert np.array_equal(order.numpy(), _seed_greedy(cols))


def test_blocked_order_is_a_permutation_starting_at_the_largest_column():
    cols = torch.randn(3000, 4, generator=_gen(2))
    cols[1234] *= 10
    order = greedy_order(cols, block=128)
    assert torch.equal(order.sort().values, torch.arange(3000))
    assert int(order[0]) == 1234


def test_duplicate_columns_are_chained_together():
    base = torch.randn(20, 4, generator=_gen(3))
    cols = base.repeat_interleave(3, dim=0)[torch.randperm(60, generator=_gen(4))]
    order = greedy_order(cols, block=16)
    assert torch.equal(order.sort().values, torch.arange(60))
    steps = (cols[order[1:]] - cols[order[:-1]]).abs().sum(1)
    assert int((steps == 0).sum()) >= 30  # most copies follow each other at distance exactly 0


def test_blocked_chain_is_close_to_the_exact_one_and_far_better_than_no_reordering():
    w = _weight((64, 48, 3, 3), seed=5)
    g, ratio = 8, 0.25
    n = w.numel() // g
    rows = w.double().reshape(g, n)
    kept = int(ratio * n)

    def err(order):
        c = dct(rows[:, order])
        return float(c[:, kept:].norm() / rows.norm())

    exact = err(greedy_order(rows.T, block=n))  # one leaf: the seed's chain
    blocked = err(greedy_order(rows.T, block=512))  # 7 leaves
    identity = err(torch.arange(n))
    # measured: exact 0.271, blocked 0.295, identity 0.863
    assert blocked <= 1.15 * exact
    assert blocked < 0.35 * identity


def test_order_validation():
    with pytest.raises(ValueError, match=r"\(n, g\)"):
        greedy_order(torch.randn(5))
    with pytest.raises(ValueError, match="block"):
        greedy_order(torch.randn(5, 2), block=1)


# -------------------------------------------------------------------------------------------- compress


@pytest.mark.parametrize(("shape", "g"), [
    ((64, 32, 3, 3), 4),
    ((7, 5, 3, 3), 4),  # N = 315: g does not divide N, zero padding
    ((10, 7), 3),
    ((16, 8, 1, 1), 1),
    ((6, 5, 3, 3), 270),  # g = N: one column
    ((33, 17, 3, 3), 8),
])
def test_full_ratio_reconstructs_exactly(shape, g):
    w = _weight(shape)
    f = reorder_compress(w, g, 1.0)
    assert f.kept == f.n_cols == math.ceil(w.numel() / g)
    rec = reorder_reconstruct(f)
    assert rec.shape == w.shape and rec.dtype == torch.float32
    assert f.rel_error(w) <= 1e-6
    assert torch.equal(f.reconstruct(), rec)


def test_error_is_monotone_in_the_ratio():
    w = _weight((64, 48, 3, 3), seed=1)
    ratios = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]
    errors = [reorder_compress(w, 4, r).rel_error(w) for r in ratios]
    assert all(b <= a + 1e-7 for a, b in zip(errors, errors[1:], strict=False))
    assert errors[0] > 0.3 and errors[-1] < 1e-6


def test_kept_counts():
    w = torch.randn(64, 32, 3, 3, generator=_gen())
    assert reorder_compress(w, 4, 0.25).kept == 1152  # n = 4608, ⌈0.25·4608⌉
    assert reorder_compress(w, 4, 0.1).kept == 461  # ⌈460.8⌉
    assert reorder_compress(w, 4, 1e-9).kept == 1  # never zero coefficients
    assert reorder_compress(w, 4, 1 / 3).kept == 1536  # 4608/3 exactly, not rounded up by float error


def test_storage_ratio_counts_the_index_bits():
    w = torch.randn(64, 32, 3, 3, generator=_gen())
    f = reorder_compress(w, 4, 0.25)  # N = 18432, n = 4608, t = 1152, ⌈log₂ 4608⌉ = 13 bits
    assert storage_ratio(f) == pytest.approx((4 * 1152 * 32 + 4608 * 13) / (18432 * 32), abs=0, rel=1e-15)
    assert storage_ratio(f) == pytest.approx(0.3515625, abs=0, rel=1e-15)
    assert storage_ratio(f, index_bits=32) == pytest.approx((4 * 1152 + 4608) / 18432, rel=1e-15)
    assert storage_ratio(f, value_bits=16) == pytest.approx((4 * 1152 * 16 + 4608 * 13) / (18432 * 16), rel=1e-15)
    full = reorder_compress(w, 4, 1.0)
    assert storage_ratio(full) > 1.0  # everything kept, plus the index


def test_progressive_ratio_follows_the_seed_rule():
    assert progressive_ratio(64 * 64, 1.0, 64) == pytest.approx(1 / 2)  # r_l = 1 + r'
    assert progressive_ratio(512 * 512 * 9, 1.0, 64) == pytest.approx(1 / 25)  # r_l = 1 + 24·r'
    assert progressive_ratio(100, 0.0, 64) == 1.0
    with pytest.raises(ValueError):
        progressive_ratio(100, -1.0, 64)


def test_compress_validation():
    w = torch.randn(8, 4, 3, 3)
    for groups in (0, 289, 2.0, True):
        with pytest.raises(ValueError, match="groups"):
            reorder_compress(w, groups, 0.5)
    for ratio in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            reorder_compress(w, 4, ratio)
    with pytest.raises(ValueError, match="floating"):
        reorder_compress(torch.ones(8, 4, dtype=torch.int64), 4, 0.5)
    f = reorder_compress(w, 4, 0.5)
    with pytest.raises(ValueError, match="permutation"):
        ReorderFactors(coefficients=f.coefficients, permutation=f.permutation[:-1], shape=f.shape, n_cols=f.n_cols)
    with pytest.raises(ValueError, match="do not match"):
        ReorderFactors(coefficients=f.coefficients, permutation=f.permutation, shape=(8, 4, 3, 5), n_cols=f.n_cols)
