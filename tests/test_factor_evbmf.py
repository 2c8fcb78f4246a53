"""EVBMF with zero singular values (pruned or dead filters): the rank is that of the positive part."""

import pytest
import torch

from tdexport.factor._spectral import row_spectrum
from tdexport.factor.evbmf import _zero_tolerance, evbmf_rank, evbmf_rank_from_values

# (rows, cols, planted rank): wide, tall, square and conv-unfolding-like shapes
SHAPES = [(64, 576, 5), (576, 64, 5), (200, 200, 5), (128, 1152, 9), (48, 432, 3)]


def _planted(rows, cols, rank, seed):
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(rows, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, cols, generator=g, dtype=torch.float64)
    return signal / signal.std() + 0.1 * torch.randn(rows, cols, generator=g, dtype=torch.float64)


def _zero_three(m):
    """Zero three rows (or columns, for a tall matrix): three exact-zero singular values."""
    z = m.clone()
    if m.shape[0] <= m.shape[1]:
        z[:3] = 0
    else:
        z[:, :3] = 0
    return z


def _rotate(m, seed):
    """Q·m (or m·Qᵀ) for a random orthogonal Q: same singular values, null space off the axes."""
    n = min(m.shape)
    q = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=m.dtype))[0]
    return q @ m if m.shape[0] <= m.shape[1] else m @ q.T


@pytest.mark.parametrize(("rows", "cols", "rank"), SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_zeroed_rows_keep_the_planted_rank(rows, cols, rank, seed):
    m = _planted(rows, cols, rank, seed)
    assert evbmf_rank(m) == rank
    z = _zero_three(m)
    # float64 and float32 matrices, zeros on the axes and rotated off them (then the Gram path returns
    # rounding noise instead of exact zeros); values from the Gram eigendecomposition of either side
    # (the larger side pads with zeros, as mode_spectrum does for a tall unfolding) and from a real SVD.
    for mat in (z, _rotate(z, seed), z.float(), _rotate(z, seed).float()):
        assert evbmf_rank(mat) == rank
        assert evbmf_rank_from_values(torch.linalg.svdvals(mat), tuple(mat.shape)) == rank
        assert evbmf_rank_from_values(row_spectrum(mat).values, tuple(mat.shape)) == rank
        assert evbmf_rank_from_values(row_spectrum(mat.T).values, tuple(mat.shape)) == rank


@pytest.mark.parametrize(("rows", "cols", "rank"), SHAPES)
def test_tiny_positive_and_negative_noise_in_place_of_zeros_counts_as_zero(rows, cols, rank):
    values = torch.linalg.svdvals(_planted(rows, cols, rank, 2))
    top = float(values[0])
    # what a float64 Gram eigendecomposition returns for exact zeros: ±√(n·eps)·σ_max-sized values
    noise = torch.tensor([3e-8, 1e-9, -2e-9, -5e-8], dtype=torch.float64) * top
    with_zeros = torch.cat([values[:-4], noise])
    assert evbmf_rank_from_values(values, (rows, cols)) == rank
    assert evbmf_rank_from_values(with_zeros, (rows, cols)) == rank
    assert evbmf_rank_from_values(with_zeros.flip(0), (cols, rows)) == rank  # any order, either orientation


def test_half_the_rows_zeroed_still_gives_the_planted_rank():
    m = _planted(128, 1152, 7, 3)
    z = m.clone()
    z[::2] = 0  # 64 dead filters
    assert evbmf_rank(m) == evbmf_rank(z) == 7


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (1, 7), (64, 576)])
def test_all_zero_matrix_has_rank_one(shape):
    z = torch.zeros(*shape, dtype=torch.float64)
    assert evbmf_rank(z) == 1
    assert evbmf_rank(z.float()) == 1
    assert evbmf_rank_from_values(row_spectrum(z).values, shape) == 1
    assert evbmf_rank_from_values(torch.zeros(0), shape) == 1


def test_zero_tolerance_follows_the_source_precision():
    f32, f64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps
    # max(L, M)·eps of the source dtype, but never below the float64 Gram floor √(max(L, M)·eps64)
    assert _zero_tolerance(2.0, (64, 576), torch.float32) == pytest.approx(2.0 * 576 * f32, rel=1e-12)
    assert _zero_tolerance(2.0, (576, 64), torch.float64) == pytest.approx(2.0 * (576 * f64) ** 0.5, rel=1e-12)
    # half precision is judged at float32's eps (576·eps_bf16 would exceed σ_max itself)
    assert _zero_tolerance(2.0, (64, 576), torch.bfloat16) == _zero_tolerance(2.0, (64, 576), torch.float32)
    assert _zero_tolerance(0.0, (64, 576), torch.float32) == 0.0
    # a float32 source drops 2e-5·σ_max values, a float64 one keeps them: same answer either way
    values = torch.linalg.svdvals(_zero_three(_planted(64, 576, 5, 4)))
    spectrum = torch.cat([values[:-3], torch.full((3,), 2e-5, dtype=torch.float64) * values[0]])
    assert float(spectrum[-1]) < _zero_tolerance(float(values[0]), (64, 576), torch.float32)
    assert float(spectrum[-1]) > _zero_tolerance(float(values[0]), (64, 576), torch.float64)
    assert evbmf_rank_from_values(spectrum, (64, 576), dtype=torch.float32) == 5
    assert evbmf_rank_from_values(spectrum.float(), (64, 576)) == 5
    assert evbmf_rank_from_values(spectrum, (64, 576)) == 5
