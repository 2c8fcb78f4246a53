"""Factorized layer chains reproduce the layers they replace, and their costs are counted exactly."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tdexport import layers as L
from tdexport.factor.cp import cp_als
from tdexport.factor.svd import truncated_svd
from tdexport.factor.tucker import tucker2

CONV_GEOMETRIES = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=1, padding=0),
    dict(kernel_size=3, stride=1, padding=2, dilation=2),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
    dict(kernel_size=(5, 3), stride=(1, 2), padding=(0, 1), dilation=(1, 2)),
    dict(kernel_size=7, stride=2, padding=3),
]


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# Float64 chains that are exact rewrites of the layer agree to rounding: ~1e-15 relative is measured,
# 1e-12 leaves room for other BLAS orderings and still fails on any real mismatch.
EXACT = 1e-12


def _conv(cin, cout, bias, **geom):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, bias=bias, **geom).double()
    if bias:
        nn.init.normal_(conv.bias)
    return conv


def _input(c, hw=(13, 11)):
    return torch.randn(2, c, *hw, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("geom", CONV_GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_tucker2_full_rank_reproduces_conv(geom, bias):
    conv = _conv(6, 10, bias, **geom)
    f = tucker2(conv.weight.detach(), (10, 6))
    seq = L.load_tucker2(L.tucker2_structure(conv, (10, 6)), conv, f)
    x = _input(6)
    assert _rel(seq(x), conv(x)) < EXACT


@pytest.mark.parametrize("geom", CONV_GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_cp_chain_equals_conv_rebuilt_from_its_factors(geom, bias):
    conv = _conv(6, 10, bias, **geom)
    f = cp_als(conv.weight.detach(), 7, iters=30)
    seq = L.load_cp(L.cp_structure(conv, (7,)), conv, f)
    x = _input(6)
    rebuilt = F.conv2d(x, f.reconstruct(), conv.bias, conv.stride, conv.padding, conv.dilation)
    assert _rel(seq(x), rebuilt) < EXACT
    assert len(seq) == 4 and seq[1].groups == 7 and seq[2].groups == 7


def test_cp_chain_recovers_planted_kernel():
    g = torch.Generator().manual_seed(2)
    factors = [torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (12, 8, 3, 3)]
    w = torch.einsum("or,ir,hr,wr->oihw", *factors)
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    f = cp_als(w, 5, iters=500, tol=1e-14)
    assert f.rel_error(w) <= 1e-9  # ALS reaches the planted kernel to ~1e-12 in float64
    seq = L.load_cp(L.cp_structure(conv, (5,)), conv, f)
    x = _input(8)
    rebuilt = F.conv2d(x, f.reconstruct(), None, conv.stride, conv.padding, conv.dilation)
    assert _rel(seq(x), rebuilt) < EXACT
    assert _rel(seq(x), conv(x)) <= 1e-9


@pytest.mark.parametrize("geom", [dict(stride=1, padding=0), dict(stride=2, padding=0), dict(stride=2, padding=1)])
@pytest.mark.parametrize("bias", [True, False])
def test_svd_full_rank_reproduces_1x1_conv(geom, bias):
    conv = _conv(12, 9, bias, kernel_size=1, **geom)
    f = truncated_svd(L.weight_matrix_of(conv.weight), 9)
    seq = L.load_svd(L.svd_structure(conv, (9,)), conv, f)
    x = _input(12)
    assert _rel(seq(x), conv(x)) < EXACT


@pytest.mark.parametrize("bias", [True, False])
def test_svd_full_rank_reproduces_linear(bias):
    torch.manual_seed(0)
    lin = nn.Linear(20, 7, bias=bias).double()
    f = truncated_svd(lin.weight.detach(), 7)
    seq = L.load_svd(L.svd_structure(lin, (7,)), lin, f)
    x = torch.randn(5, 3, 20, dtype=torch.float64)
    assert _rel(seq(x), lin(x)) < EXACT


def _measured(chain, x):
    macs = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs.append(out[0].numel() * m.weight[0].numel())  # per output element: C_in/g·kh·kw MACs
        else:
            macs.append(out[0].numel() * m.in_features)

    hs = [m.register_forward_hook(hook) for m in chain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    chain(x)
    for h in hs:
        h.remove()
    return sum(p.numel() for p in chain.parameters()), sum(macs)


@pytest.mark.parametrize("geom", CONV_GEOMETRIES)
def test_chain_cost_matches_measured_cost(geom):
    conv = _conv(6, 10, True, **geom)
    x = _input(6, (17, 15))
    for seq in (nn.Sequential(conv), L.tucker2_structure(conv, (4, 3)), L.cp_structure(conv, (5,))):
        assert L.chain_cost(seq, in_hw=(17, 15)) == _measured(seq.double(), x[:1])


def test_structure_for_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown factorization method"):
        L.structure_for("tucker3", nn.Conv2d(2, 2, 3), (1,))
