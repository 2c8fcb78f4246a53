"""HT-2 and Tucker-1 (the HT-2 seed's methods): exactness, chains vs dense convs, costs, rank rules, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tdexport.factor._spectral import mode_product, mode_spectrum
from tdexport.factor.ht2 import HT2Factors, energy_rank, ht2, ht2_energy_ranks, ht2_reconstruct
from tdexport.factor.tucker1 import Tucker1Factors, tucker1, tucker1_energy_rank, tucker1_reconstruct
from tdexport.layers import chain_cost, conv_output_hw
from tdexport.layers_extra import ht2_structure, load_ht2, load_tucker1, tucker1_structure

# (in, out, conv kwargs): the brief's geometry set plus one asymmetric case that catches swapped axes.
GEOMETRIES = {
    "3x3s1p1": (6, 10, dict(kernel_size=3, stride=1, padding=1)),
    "3x3s2p1": (6, 10, dict(kernel_size=3, stride=2, padding=1)),
    "5x5p2": (5, 8, dict(kernel_size=5, padding=2)),
    "3x3d2": (6, 10, dict(kernel_size=3, padding=2, dilation=2)),
    "7x7s2p3-stem": (3, 16, dict(kernel_size=7, stride=2, padding=3)),
    "3x1": (6, 10, dict(kernel_size=(3, 1), padding=(1, 0))),
    "3x5-asym": (6, 10, dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
}
HW = (13, 11)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _conv(name, dtype=torch.float32, bias=True):
    cin, cout, geom = GEOMETRIES[name]
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, bias=bias, **geom).to(dtype)
    if bias:
        nn.init.normal_(conv.bias)
    return conv


def _input(conv, dtype=torch.float32):
    return torch.randn(2, conv.in_channels, *HW, generator=_gen(1), dtype=dtype)


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _full_ht2_ranks(shape):
    o, i, kh, kw = shape
    return i, min(i * kh, o * kw), o


def _decaying(shape, seed=0, q=0.6):
    """Kernel with geometric singular-value decay on the channel modes (more like trained weights)."""
    w = torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)
    for mode in (0, 1):
        n = shape[mode]
        qm = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed + 10 + mode), dtype=torch.float64))[0]
        w = mode_product(w, qm * q ** torch.arange(n, dtype=torch.float64), mode)
    return w


def _projected_reference(w, u1, u3):
    """Y_mat (R1·kh × R3·kw) by an independent einsum, to check the rank rule's matrix."""
    y = torch.einsum("oihw,ia,ob->ahbw", w, u1, u3)
    r1, kh, r3, kw = y.shape
    return y.reshape(r1 * kh, r3 * kw)


# --- exactness of the decompositions ---------------------------------------------------------------


@pytest.mark.parametrize("name", GEOMETRIES)
def test_full_rank_reconstructs_weight(name):
    w64 = _conv(name, torch.float64).weight.detach()
    f = ht2(w64, _full_ht2_ranks(w64.shape))
    assert f.rel_error(w64) < 1e-10
    assert _rel(ht2_reconstruct(f), w64) < 1e-10
    f32 = ht2(w64.float(), _full_ht2_ranks(w64.shape))
    assert f32.u1.dtype == torch.float32 and _rel(f32.reconstruct(), w64) < 1e-5

    t = tucker1(w64, min(w64.shape[0], w64[0].numel()))
    assert t.rel_error(w64) < 1e-10 and _rel(tucker1_reconstruct(t), w64) < 1e-10
    t32 = tucker1(w64.float(), t.rank)
    assert t32.core.dtype == torch.float32 and _rel(t32.reconstruct(), w64) < 1e-5


def test_ht2_shapes_orthonormality_and_error_identity():
    w = _decaying((12, 10, 3, 3))
    f = ht2(w, (4, 7, 5))
    assert f.ranks == (4, 7, 5) and f.weight_shape == (12, 10, 3, 3)
    assert tuple(f.u1.shape) == (10, 4) and tuple(f.g1.shape) == (4, 3, 7)
    assert tuple(f.g2.shape) == (7, 5, 3) and tuple(f.u3.shape) == (12, 5)
    assert f.n_params == 10 * 4 + 3 * 4 * 7 + 3 * 7 * 5 + 5 * 12
    eye = torch.eye
    assert torch.allclose(f.u1.T @ f.u1, eye(4, dtype=w.dtype), atol=1e-12)
    assert torch.allclose(f.u3.T @ f.u3, eye(5, dtype=w.dtype), atol=1e-12)
    g = f.g1.reshape(12, 7)
    assert torch.allclose(g.T @ g, eye(7, dtype=w.dtype), atol=1e-10)
    # Nested orthogonal projections + Eckart–Young: err² = 1 − Σ_{k≤R13} σ_k(Y_mat)² / ‖W‖².
    sv = torch.linalg.svdvals(_projected_reference(w, f.u1, f.u3))
    expected = math.sqrt(1.0 - float((sv[:7] ** 2).sum() / (w**2).sum()))
    assert f.rel_error(w) == pytest.approx(expected, rel=1e-9)
    assert torch.equal(ht2(w, (4, 7, 5)).g2, f.g2)  # deterministic signs


def test_tucker1_is_eckart_young_on_the_output_unfolding():
    w = _decaying((16, 3, 7, 7), seed=3)
    sv = torch.linalg.svdvals(w.reshape(16, -1))
    for r in (1, 4, 9, 16):
        f = tucker1(w, r)
        assert tuple(f.core.shape) == (r, 3, 7, 7) and tuple(f.u.shape) == (16, r)
        assert f.n_params == r * 3 * 49 + 16 * r
        expected = math.sqrt(float((sv[r:] ** 2).sum() / (sv**2).sum()))
        assert f.rel_error(w) == pytest.approx(expected, rel=1e-9, abs=1e-12)


# --- chains reproduce the dense conv -----------------------------------------------------------------


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_chains_reproduce_dense_conv_float32(name, bias):
    conv = _conv(name, bias=bias)
    w, x = conv.weight.detach(), _input(conv)
    ref = F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation)

    ranks = _full_ht2_ranks(w.shape)
    seq = load_ht2(ht2_structure(conv, ranks), conv, ht2(w, ranks))
    out = seq(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _rel(out, ref) < 1e-5
    assert seq[-1].bias is not None if bias else all(m.bias is None for m in seq)
    assert all(m.bias is None for m in seq[:-1])

    r = min(w.shape[0], w[0].numel())
    seq1 = load_tucker1(tucker1_structure(conv, (r,)), conv, tucker1(w, r))
    assert _rel(seq1(x), ref) < 1e-5


@pytest.mark.parametrize("name", GEOMETRIES)
def test_truncated_chains_equal_conv_with_rebuilt_kernel(name):
    # Geometry check independent of truncation: the chain is the dense conv of the reconstructed kernel.
    conv = _conv(name, torch.float64)
    w, x = conv.weight.detach(), _input(conv, torch.float64)
    o, i, kh, kw = w.shape
    ranks = (max(1, i // 2), max(1, min(i // 2 * kh, (o // 2) * kw) - 1), o // 2)
    f = ht2(w, ranks)
    seq = load_ht2(ht2_structure(conv, ranks), conv, f)
    ref = F.conv2d(x, f.reconstruct(), conv.bias, conv.stride, conv.padding, conv.dilation)
    assert _rel(seq(x), ref) < 1e-12
    t = tucker1(w, 3)
    seq1 = load_tucker1(tucker1_structure(conv, 3), conv, t)
    ref1 = F.conv2d(x, t.reconstruct(), conv.bias, conv.stride, conv.padding, conv.dilation)
    assert _rel(seq1(x), ref1) < 1e-12


def test_ht2_chain_geometry_is_split_per_axis():
    conv = _conv("3x5-asym")
    seq = ht2_structure(conv, (3, 4, 5))
    assert [m.kernel_size for m in seq] == [(1, 1), (3, 1), (1, 5), (1, 1)]
    assert [m.stride for m in seq] == [(1, 1), (2, 1), (1, 1), (1, 1)]
    assert [m.padding for m in seq] == [(0, 0), (1, 0), (0, 2), (0, 0)]
    assert [m.dilation for m in seq] == [(1, 1), (1, 1), (1, 2), (1, 1)]
    assert all(isinstance(m, nn.Conv2d) and m.groups == 1 for m in seq)
    same = nn.Conv2d(4, 6, 3, padding="same")
    assert ht2_structure(same, (2, 3, 2))[1].padding == (1, 0)


# --- costs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GEOMETRIES)
def test_chain_cost_matches_hand_count(name):
    conv = _conv(name)
    o, i, kh, kw = conv.weight.shape
    h, w_ = HW
    hp, wp = conv_output_hw(conv, HW)
    r1, r3 = max(1, i - 1), max(1, o // 2)
    r13 = min(r1 * kh, r3 * kw, 4)
    params, macs = chain_cost(ht2_structure(conv, (r1, r13, r3)), in_hw=HW)
    assert params == i * r1 + kh * r1 * r13 + kw * r13 * r3 + r3 * o + o
    assert macs == h * w_ * i * r1 + hp * w_ * kh * r1 * r13 + hp * wp * kw * r13 * r3 + hp * wp * r3 * o

    r = 3
    params1, macs1 = chain_cost(tucker1_structure(conv, r), in_hw=HW)
    assert params1 == r * i * kh * kw + r * o + o
    assert macs1 == hp * wp * (r * i * kh * kw + r * o)


def test_stem_costs_concrete_numbers():
    # 7×7/2 stem 3→16 on 13×11 gives 7×6 outputs; ranks (3, 5, 4).
    conv = _conv("7x7s2p3-stem")
    assert conv_output_hw(conv, HW) == (7, 6)
    assert chain_cost(ht2_structure(conv, (3, 5, 4)), in_hw=HW) == (
        9 + 105 + 140 + 64 + 16,
        143 * 9 + 7 * 11 * 105 + 42 * 140 + 42 * 64,
    )


# --- rank rules --------------------------------------------------------------------------------------

ENERGIES = [0.1, 0.4, 0.7, 0.85, 0.95, 0.99, 0.999]


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("kind", ["random", "decaying"])
def test_energy_ranks_monotone_and_bounded(name, kind):
    shape = tuple(_conv(name).weight.shape)
    w = _decaying(shape, seed=5) if kind == "decaying" else torch.randn(*shape, generator=_gen(5), dtype=torch.float64)
    o, i, kh, kw = shape
    # R1, R3 are monotone by construction; R13 and the error are monotone on these fixtures but not in
    # general (see test_r13_monotonicity_is_not_guaranteed).
    prev, prev_err = (0, 0, 0), math.inf
    spectra = (mode_spectrum(w, 1), mode_spectrum(w, 0))
    assert ht2_energy_ranks(w, 0.9, spectra=spectra) == ht2_energy_ranks(w, 0.9)
    for e in ENERGIES:
        r1, r13, r3 = ranks = ht2_energy_ranks(w, e, spectra=spectra)
        assert 1 <= r1 <= i and 1 <= r3 <= o and 1 <= r13 <= min(r1 * kh, r3 * kw)
        assert all(a >= b for a, b in zip(ranks, prev, strict=True)), (e, ranks, prev)
        err = ht2(w, ranks, spectra=spectra).rel_error(w)
        assert err <= prev_err + 1e-12
        prev, prev_err = ranks, err
    r_prev = 0
    for e in ENERGIES:
        r = tucker1_energy_rank(w, e)
        assert r_prev <= r <= min(o, i * kh * kw)
        r_prev = r


def test_r13_comes_from_the_projected_matrix():
    w = _decaying((12, 10, 3, 3), seed=7)
    for e in (0.5, 0.8, 0.9):
        r1, r13, r3 = ht2_energy_ranks(w, e)
        sv_i = torch.linalg.svdvals(w.transpose(0, 1).reshape(10, -1))
        sv_o = torch.linalg.svdvals(w.reshape(12, -1))
        assert r1 == energy_rank(sv_i, e) and r3 == energy_rank(sv_o, e)
        f = ht2(w, (r1, 1, r3))  # same U1, U3 for any R13
        sv_y = torch.linalg.svdvals(_projected_reference(w, f.u1, f.u3))
        frac = (sv_y**2).cumsum(0) / (sv_y**2).sum()
        assert frac[r13 - 1] > e and (r13 == 1 or frac[r13 - 2] <= e)


def test_r13_monotonicity_is_not_guaranteed():
    # The documented corner case: a larger R1 brings a dominant row block into Y_mat, so R13 drops.
    g = _gen(1)
    w = torch.randn(4, 20, 3, 3, generator=g, dtype=torch.float64)
    w = w * torch.rand(4, 1, 1, 1, generator=g, dtype=torch.float64) ** 3
    assert ht2_energy_ranks(w, 0.50) == (2, 2, 1)
    assert ht2_energy_ranks(w, 0.51) == (3, 1, 1)
    assert ht2(w, (3, 1, 1)).rel_error(w) > ht2(w, (2, 2, 1)).rel_error(w)


def test_energy_rank_rule_is_strict():
    values = torch.tensor([2.0, 1.0, 1.0, 0.0])  # energies 4, 1, 1, 0 of 6
    assert energy_rank(values, 0.5) == 1
    assert energy_rank(values, 4 / 6) == 2  # exactly 4/6 kept by k=1 is not "more than"
    assert energy_rank(values, 0.99) == 3
    assert energy_rank(torch.zeros(5), 0.9) == 1
    assert ht2_energy_ranks(torch.zeros(4, 3, 3, 3), 0.9) == (1, 1, 1)


def test_errors_decrease_monotonically_with_each_rank():
    w = torch.randn(12, 10, 3, 3, generator=_gen(11), dtype=torch.float64)

    def errs(rank_list):
        return [ht2(w, r).rel_error(w) for r in rank_list]

    for seq in (
        [(r1, 4, 6) for r1 in range(2, 11)],
        [(5, 4, r3) for r3 in range(2, 13)],
        [(5, r13, 6) for r13 in range(1, 16)],
        [(k, min(3 * k, 30), min(k + 2, 12)) for k in range(1, 11)],
    ):
        e = errs(seq)
        assert all(b <= a + 1e-12 for a, b in zip(e[:-1], e[1:], strict=True)), (seq, e)
        assert e[-1] < e[0]
    assert errs([(10, 30, 12)])[0] < 1e-12
    t = [tucker1(w, r).rel_error(w) for r in range(1, 13)]
    assert all(b < a for a, b in zip(t[:-1], t[1:], strict=True)) and t[-1] < 1e-12


# --- bad inputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ranks",
    [(0, 1, 1), (7, 1, 1), (2, 1, 11), (2, 1, 0), (2, 0, 2), (2, 7, 5), (2, 7, 2), (2, 3), (2, 3, 4, 5),
     (2.5, 3, 4), (True, 1, 1), (float("inf"), 1, 1), (float("nan"), 1, 1), "abc", 3],
)
def test_ht2_rejects_bad_ranks(ranks):
    w = torch.randn(10, 6, 3, 3)
    with pytest.raises(ValueError):
        ht2(w, ranks)
    with pytest.raises(ValueError):
        ht2_structure(nn.Conv2d(6, 10, 3), ranks)


@pytest.mark.parametrize("energy", [0.0, 1.0, -0.1, 1.5, True, "0.9", None])
def test_energy_rules_reject_bad_energy(energy):
    w = torch.randn(10, 6, 3, 3)
    with pytest.raises(ValueError):
        ht2_energy_ranks(w, energy)
    with pytest.raises(ValueError):
        tucker1_energy_rank(w, energy)


@pytest.mark.parametrize(
    "weight",
    [torch.randn(10, 6, 3), torch.randn(10, 6), torch.ones(4, 3, 3, 3, dtype=torch.int64), torch.randn(0, 3, 3, 3),
     [[1.0]]],
)
def test_bad_weights_rejected(weight):
    with pytest.raises(ValueError):
        ht2(weight, (1, 1, 1))
    with pytest.raises(ValueError):
        ht2_energy_ranks(weight, 0.9)
    with pytest.raises(ValueError):
        tucker1(weight, 1)


def test_tucker1_rejects_bad_ranks_and_structures_reject_bad_convs():
    w = torch.randn(10, 2, 1, 1)
    for r in (0, 3, 2.5, True):
        with pytest.raises(ValueError):
            tucker1(w, r)
    conv = nn.Conv2d(6, 10, 3)
    for r in (0, 11, (2, 3), "a"):
        with pytest.raises(ValueError):
            tucker1_structure(conv, r)
    for bad in (nn.Conv2d(6, 10, 3, groups=2), nn.Conv2d(6, 10, 3, padding=1, padding_mode="reflect"),
                nn.Conv2d(6, 10, 4, padding="same"), nn.Linear(6, 10)):
        with pytest.raises(ValueError):
            ht2_structure(bad, (2, 2, 2))
        with pytest.raises(ValueError):
            tucker1_structure(bad, 2)


def test_loaders_reject_mismatched_factors():
    conv = nn.Conv2d(6, 10, 3, padding=1)
    f = ht2(conv.weight.detach(), (3, 4, 5))
    with pytest.raises(ValueError):
        load_ht2(ht2_structure(conv, (3, 5, 5)), conv, f)
    with pytest.raises(ValueError):
        load_ht2(ht2_structure(conv, (3, 4, 5)), nn.Conv2d(6, 12, 3), f)
    t = tucker1(conv.weight.detach(), 4)
    with pytest.raises(ValueError):
        load_tucker1(tucker1_structure(conv, 5), conv, t)
    with pytest.raises(ValueError):
        load_tucker1(tucker1_structure(conv, 4), nn.Conv2d(6, 10, 5), t)
    with pytest.raises(ValueError):
        HT2Factors(u1=f.u1, g1=f.g1, g2=f.g2, u3=f.u3[:, :4])
    with pytest.raises(ValueError):
        Tucker1Factors(core=t.core, u=t.u[:, :3])
