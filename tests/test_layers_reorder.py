"""Reordered-DCT layers: exactness at ratio 1, float32 rebuild vs the float64 reference, to_dense, gradients,
state-dict round trip, parameter count, storage, cost, folding and refusals."""

import functools
import math

import pytest
import torch
from torch import nn

from tdexport.factor.reorder import ReorderFactors, reorder_compress, reorder_reconstruct, storage_ratio
from tdexport.layers import chain_cost, structure_for
from tdexport.layers_reorder import (
    ReorderedConv2d,
    ReorderedLinear,
    fold_reordered,
    load_reorder,
    reorder_ranks,
    reorder_structure,
)

# name → (constructor kwargs for nn.Conv2d / nn.Linear, input shape)
GEOMETRIES = {
    "3x3_s1_p1": (dict(in_channels=6, out_channels=8, kernel_size=3, padding=1), (2, 6, 9, 9)),
    "3x3_s2_nobias": (dict(in_channels=6, out_channels=8, kernel_size=3, stride=2, bias=False), (2, 6, 9, 9)),
    "1x1": (dict(in_channels=6, out_channels=10, kernel_size=1), (2, 6, 5, 5)),
    "5x5_dil2": (dict(in_channels=4, out_channels=6, kernel_size=5, dilation=2, padding=4), (2, 4, 11, 11)),
    "grouped2": (dict(in_channels=6, out_channels=8, kernel_size=3, padding=1, groups=2), (2, 6, 7, 7)),
    "stem7x7": (dict(in_channels=3, out_channels=8, kernel_size=7, stride=2, padding=3, bias=False),
                (2, 3, 16, 16)),
    "same_reflect": (dict(in_channels=4, out_channels=5, kernel_size=(3, 4), padding="same",
                          padding_mode="reflect"), (2, 4, 8, 9)),
    "linear": (dict(in_features=20, out_features=12), (3, 20)),
    "linear_nobias": (dict(in_features=20, out_features=12, bias=False), (4, 2, 20)),
}
GROUPS = (1, 3, 4, 7)  # 7 divides none of the N above; 3 and 4 miss some


def _layer(name, seed=0):
    kwargs, _ = GEOMETRIES[name]
    torch.manual_seed(seed)
    layer = nn.Linear(**kwargs) if "in_features" in kwargs else nn.Conv2d(**kwargs)
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.uniform_(-1, 1)
    return layer


def _input(name, seed=1):
    return torch.randn(*GEOMETRIES[name][1], generator=torch.Generator().manual_seed(seed))


@functools.cache
def _factors(name, g, ratio):
    return reorder_compress(_layer(name).weight, g, ratio)


def _module(name, g, ratio):
    layer = _layer(name)
    f = _factors(name, g, ratio)
    return layer, load_reorder(reorder_structure(layer, (g, f.kept)), layer, f), f


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


CASES = [(name, g) for name in GEOMETRIES for g in GROUPS]


@pytest.mark.parametrize(("name", "g"), CASES)
def test_ratio_one_matches_the_original_layer(name, g):
    layer, module, f = _module(name, g, 1.0)
    assert f.kept == f.n_cols == -(-layer.weight.numel() // g)
    x = _input(name)
    with torch.no_grad():
        assert _rel(module(x), layer(x)) <= 1e-5
        assert _rel(module.dense_weight(), layer.weight) <= 1e-5


@pytest.mark.parametrize(("name", "g"), CASES)
def test_to_dense_gradients_state_dict_and_parameter_count(name, g):
    layer, module, f = _module(name, g, 0.25)
    x = _input(name)

    # float32 rebuild against the float64 reference reconstruction
    ref = reorder_reconstruct(ReorderFactors(f.coefficients.double(), f.permutation, f.shape, f.n_cols))
    assert module.dense_weight().dtype == torch.float32
    assert _rel(module.dense_weight(), ref) <= 1e-5

    # to_dense: a plain layer of the same type, geometry, device and dtype, same output
    dense = module.to_dense()
    assert type(dense) is type(layer)
    for attr in ("stride", "padding", "dilation", "groups", "padding_mode", "in_features", "out_features"):
        assert getattr(dense, attr, None) == getattr(layer, attr, None)
    assert dense.weight.shape == layer.weight.shape and dense.weight.dtype == layer.weight.dtype
    assert (dense.bias is None) == (layer.bias is None)
    y = module(x)
    assert _rel(dense(x), y.detach()) <= 1e-6

    # gradients reach the coefficients only
    y.square().sum().backward()
    assert module.coefficients.grad is not None and module.coefficients.grad.abs().sum() > 0
    assert not module.permutation.requires_grad and module.permutation.grad is None
    assert module.permutation.dtype == torch.int64

    # state dict round trip into a fresh structure
    sd = module.state_dict()
    assert set(sd) == {"coefficients", "permutation"} | ({"bias"} if layer.bias is not None else set())
    fresh = reorder_structure(layer, (g, f.kept))
    fresh.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(fresh(x), module(x))

    # trainable parameters: g·t (+ bias)
    bias = layer.bias.numel() if layer.bias is not None else 0
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == g * f.kept + bias


def test_gradient_is_exact_in_float64():
    module = ReorderedConv2d(2, 3, 3, rows=3, kept=4, dtype=torch.float64)
    with torch.no_grad():
        module.coefficients.normal_()
        module.permutation.copy_(torch.randperm(module.n_cols, generator=torch.Generator().manual_seed(0)))
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    coeffs = module.coefficients.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda c: torch.func.functional_call(module, {"coefficients": c}, (x,)), (coeffs,))


def test_float32_rebuild_at_large_n():
    shape, g = (256, 256, 3, 3), 4  # n = 147456
    n = -(-math.prod(shape) // g)
    gen = torch.Generator().manual_seed(2)
    coeffs = torch.randn(g, n // 4, generator=gen, dtype=torch.float64)
    f = ReorderFactors(coeffs, torch.randperm(n, generator=gen), shape, n)
    conv = nn.Conv2d(256, 256, 3, bias=False)
    module = load_reorder(reorder_structure(conv, (g, n // 4)), conv, f)
    assert _rel(module.dense_weight(), reorder_reconstruct(f)) <= 1e-6


def test_float64_module_computes_in_float64():
    layer = _layer("linear").double()
    f = reorder_compress(layer.weight, 3, 0.5)
    module = load_reorder(reorder_structure(layer, (3, f.kept)), layer, f)
    assert module.coefficients.dtype == torch.float64
    assert _rel(module.dense_weight(), reorder_reconstruct(f)) <= 1e-12
    assert module.to_dense().weight.dtype == torch.float64


def test_storage_bits_match_storage_ratio():
    layer, module, f = _module("3x3_s1_p1", 7, 0.25)
    for vb, ib in [(32, None), (16, None), (32, 32), (8, 5)]:
        assert module.storage_bits(vb, ib) / (f.numel * vb) == pytest.approx(
            storage_ratio(f, value_bits=vb, index_bits=ib), rel=1e-15)
    assert module.storage_bits() == 7 * f.kept * 32 + f.n_cols * math.ceil(math.log2(f.n_cols))
    with pytest.raises(ValueError, match="bit widths"):
        module.storage_bits(0)


@pytest.mark.parametrize("name", ["3x3_s2_nobias", "stem7x7", "linear"])
def test_cost_is_the_dense_layers(name):
    layer, module, _ = _module(name, 4, 0.25)
    in_hw = (16, 16) if isinstance(layer, nn.Conv2d) else None
    params, macs = chain_cost([module], in_hw=in_hw, tokens=3)
    assert macs == chain_cost([layer], in_hw=in_hw, tokens=3)[1]
    assert params == sum(p.numel() for p in module.parameters())
    if in_hw is not None:
        assert module.output_hw(in_hw) == tuple(layer(torch.zeros(1, layer.in_channels, *in_hw)).shape[2:])


def test_structure_for_wraps_the_module():
    layer = _layer("1x1")
    seq = structure_for("reorder", layer, [4, 5])
    assert isinstance(seq, nn.Sequential) and isinstance(seq[0], ReorderedConv2d)


@pytest.mark.parametrize("n_total", [1, 2, 7, 60, 432, 1176])
def test_reorder_ranks_agree_with_reorder_compress(n_total):
    w = torch.randn(n_total, generator=torch.Generator().manual_seed(n_total))
    for g in sorted({1, 2, 3, 7, n_total} & set(range(1, n_total + 1))):
        n = -(-n_total // g)
        for ratio in (1e-6, 0.1, 0.25, 1 / 3, 0.5, 2 / 3, 0.999, 1.0, 1 / n, (n - 1) / n if n > 1 else 1.0):
            ranks = reorder_ranks(n_total, g, ratio)
            assert ranks == [g, reorder_compress(w, g, ratio).kept]
            assert 1 <= ranks[1] <= n


def test_reorder_ranks_exact_fractions_do_not_round_up():
    assert reorder_ranks(432, 4, 27 / 108) == [4, 27]
    assert reorder_ranks(432, 4, 1 / 3) == [4, 36]
    assert reorder_ranks(432, 7, 1.0) == [7, 62]


@pytest.mark.parametrize(("args", "match"), [
    ((0, 1, 0.5), "weight_numel"), ((10, 0, 0.5), "groups"), ((10, 11, 0.5), "groups"),
    ((10, True, 0.5), "groups"), ((10, 2, 0.0), "ratio"), ((10, 2, 1.5), "ratio"),
])
def test_reorder_ranks_refusals(args, match):
    with pytest.raises(ValueError, match=match):
        reorder_ranks(*args)


def test_fold_reordered_in_sequential():
    c1, c2 = _layer("3x3_s1_p1"), nn.Conv2d(8, 4, 1)
    f1, f2 = reorder_compress(c1.weight, 4, 0.5), reorder_compress(c2.weight, 3, 0.5)
    model = nn.Sequential(load_reorder(reorder_structure(c1, (4, f1.kept)), c1, f1), nn.ReLU(),
                          nn.Sequential(load_reorder(reorder_structure(c2, (3, f2.kept)), c2, f2)))
    model.eval()
    x = _input("3x3_s1_p1")
    with torch.no_grad():
        before = model(x)
    assert fold_reordered(model) == 2
    assert not any(isinstance(m, (ReorderedConv2d, ReorderedLinear)) for m in model.modules())
    assert type(model[0]) is nn.Conv2d and type(model[2][0]) is nn.Conv2d
    assert not model[0].training
    with torch.no_grad():
        assert _rel(model(x), before) <= 1e-6
    assert fold_reordered(model) == 0


def test_fold_reordered_keeps_sharing():
    _, module, _ = _module("linear", 3, 0.5)
    model = nn.Module()
    model.a = module
    model.b = module
    model.seq = nn.Sequential(module, nn.ReLU())
    assert fold_reordered(model) == 1
    assert type(model.a) is nn.Linear and model.a is model.b is model.seq[0]
    with pytest.raises(ValueError, match="to_dense"):
        fold_reordered(module)


@pytest.mark.parametrize(("ranks", "match"), [
    ((0, 1), "groups g"), ((433, 1), "groups g"), ((4, 0), "kept"), ((4, 109), "kept"), ((7, 63), "kept"),
    ((4,), r"\(g, t\)"), ((4, 2, 1), r"\(g, t\)"), ((4.0, 2), "integers"), ((True, 2), "integers"),
])
def test_structure_refuses_bad_ranks(ranks, match):
    with pytest.raises(ValueError, match=match):
        reorder_structure(_layer("3x3_s1_p1"), ranks)  # N = 432


def test_structure_accepts_the_limits():
    layer = _layer("3x3_s1_p1")
    assert reorder_structure(layer, (432, 1)).n_cols == 1
    assert reorder_structure(layer, (7, 62)).kept == 62
    assert reorder_structure(layer, (1, 432)).kept == 432


@pytest.mark.parametrize("layer", [nn.Conv1d(3, 4, 3), nn.BatchNorm2d(4), nn.ConvTranspose2d(3, 4, 3)])
def test_structure_refuses_other_layers(layer):
    with pytest.raises(ValueError, match="nn.Conv2d or nn.Linear"):
        reorder_structure(layer, (2, 2))


def test_load_refuses_factors_that_do_not_fit():
    layer, module, f = _module("3x3_s1_p1", 4, 0.25)
    other = _factors("grouped2", 4, 0.25)  # N = 216, another shape
    with pytest.raises(ValueError, match="do not fit"):
        load_reorder(module, layer, other)
    with pytest.raises(ValueError, match="do not fit"):  # same shape, other t
        load_reorder(module, layer, _factors("3x3_s1_p1", 4, 0.5))
    with pytest.raises(ValueError, match="do not fit"):  # same shape, other g
        load_reorder(module, layer, _factors("3x3_s1_p1", 3, 0.25))
    bad = ReorderFactors(f.coefficients, torch.zeros_like(f.permutation), f.shape, f.n_cols)
    with pytest.raises(ValueError, match="not a permutation"):
        load_reorder(module, layer, bad)
    with pytest.raises(ValueError, match="layer's weight"):
        load_reorder(module, nn.Conv2d(6, 8, 1), f)
    no_bias = nn.Conv2d(6, 8, 3, bias=False)
    with pytest.raises(ValueError, match="bias"):
        load_reorder(module, no_bias, f)
    with pytest.raises(ValueError, match="fills"):
        load_reorder(nn.Linear(2, 2), layer, f)
