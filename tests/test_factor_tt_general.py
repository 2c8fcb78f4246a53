"""General TT of conv / linear weights: one mode ordering, exact at full rank, clamping, the reshape-only module."""

import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tdexport.factor.tt import TTFactors
from tdexport.factor.tt_general import (
    TTGeneralFactors,
    balanced_split,
    clamp_tt_ranks,
    from_tt_view,
    resolve_modes,
    tt_general,
    tt_general_reconstruct,
    tt_view,
)
from tdexport.layers_tt import (
    TTGeneralConv2d,
    TTGeneralLinear,
    load_tt_general,
    tt_general_cost,
    tt_general_structure,
)

BIG = 10**6  # a "max rank" above every bond's limit: full TT ranks after clamping


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# ------------------------------------------------------------------------------------------- mode splits


@pytest.mark.parametrize(("n", "modes", "expected"), [
    (64, 2, (8, 8)), (96, 2, (12, 8)), (64, 3, (4, 4, 4)), (512, 2, (32, 16)), (256, 3, (8, 8, 4)),
    (3, 2, (3, 1)), (1, 2, (1, 1)), (49, 1, (49,)), (2048, 2, (64, 32)), (27, 3, (3, 3, 3)),
])
def test_balanced_split(n, modes, expected):
    assert balanced_split(n, modes) == expected


def test_balanced_split_is_the_most_balanced_factorization():
    for n in (60, 72, 120, 384, 1000):
        got = balanced_split(n, 2)
        assert math.prod(got) == n
        # every divisor pair is at least as unbalanced (ratio of largest to smallest)
        assert all(max(d, n // d) / min(d, n // d) >= got[0] / got[1] for d in range(1, n + 1) if n % d == 0)


def test_mode_spec_validation():
    for bad in [(0, 2), (8, 0), (8.0, 2), (True, 2)]:
        with pytest.raises(ValueError):
            balanced_split(*bad)
    with pytest.raises(ValueError, match="multiply to 48"):
        resolve_modes(64, (8, 6))
    with pytest.raises(ValueError, match="integers ≥ 1"):
        resolve_modes(64, (64, 0))
    with pytest.raises(ValueError, match="integers ≥ 1"):
        resolve_modes(64, ())
    assert resolve_modes(64, (4, 16)) == (4, 16)
    assert resolve_modes(64, 2) == (8, 8)


# --------------------------------------------------------------------------------------------- clamping


def test_clamp_tt_ranks_known_values():
    # modes (4, 8, 9, 8, 8): left products 4, 32, 288, 2304; right products 4608, 576, 64, 8
    req, used = clamp_tt_ranks((4, 8, 9, 8, 8), BIG)
    assert req == (BIG,) * 4 and used == (4, 32, 64, 8)
    assert clamp_tt_ranks((4, 8, 9, 8, 8), [3, 50, 7, 8])[1] == (3, 24, 7, 8)  # 24 = 3·8: left core limit
    assert clamp_tt_ranks((4, 8, 9, 8, 8), [4, 32, 100, 2])[1] == (4, 32, 16, 2)  # 16 = 8·2: right core limit
    assert clamp_tt_ranks((5, 7), 3) == ((3,), (3,))


def test_clamped_ranks_leave_no_dead_bond_channels():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = tuple(int(s) for s in rng.integers(1, 10, size=rng.integers(2, 6)))
        req = [int(r) for r in rng.integers(1, 80, size=len(sizes) - 1)]
        _, used = clamp_tt_ranks(sizes, req)
        full = (1, *used, 1)
        for k in range(len(sizes) - 1):
            assert 1 <= used[k] <= req[k]
            assert used[k] <= full[k] * sizes[k] and used[k] <= sizes[k + 1] * full[k + 2]


def test_clamp_validation():
    with pytest.raises(ValueError, match="need 4 inner ranks"):
        clamp_tt_ranks((4, 8, 9, 8, 8), [4, 4])
    with pytest.raises(ValueError, match="≥ 1"):
        clamp_tt_ranks((4, 8, 9), [4, 0])
    with pytest.raises(ValueError, match="≥ 1"):
        clamp_tt_ranks((4, 8, 9), 0)
    with pytest.raises(ValueError, match="at least 2 modes"):
        clamp_tt_ranks((4,), [])


# --------------------------------------------------------------------------------------- decomposition


@pytest.mark.parametrize(("shape", "s_in", "s_out"), [
    ((32, 24, 3, 3), 2, 2),
    ((64, 27, 3, 5), (3, 3, 3), (4, 16)),
    ((16, 12, 1, 1), 2, 3),
    ((12, 3, 7, 7), 1, 2),
    ((40, 30), 2, 2),
    ((30, 64), 3, (5, 6)),
])
def test_full_rank_reconstructs_exactly(shape, s_in, s_out):
    w = torch.randn(*shape, generator=_gen(), dtype=torch.float64)
    f = tt_general(w, s_in, s_out, BIG)
    assert f.error < 1e-10 and f.rel_error(w) < 1e-10
    assert tt_general_reconstruct(f).shape == w.shape and f.weight_shape == shape
    assert f.cores[0].dtype == torch.float64
    assert f.n_params == sum(c.numel() for c in f.cores)
    assert f.clamped == tuple((k, BIG, r) for k, r in enumerate(f.ranks))  # every bond was lowered
    assert len(f.cores) == len(f.shape_in) + len(f.shape_out) + (len(shape) == 4)


def test_ordering_is_the_same_in_decomposition_and_reconstruction():
    """A weight built from TT cores in the documented order has exactly those TT ranks (TDC's R bug would not)."""
    s_in, s_out, kernel, ranks = (4, 6), (8, 4), (3, 3), (3, 7, 5, 2)
    sizes = (*s_in, 9, *s_out)
    full = (1, *ranks, 1)
    cores = tuple(torch.randn(full[k], n, full[k + 1], generator=_gen(k), dtype=torch.float64)
                  for k, n in enumerate(sizes))
    w = from_tt_view(TTFactors(cores).reconstruct(), 32, 24, kernel)
    assert w.shape == (32, 24, 3, 3)
    assert torch.equal(from_tt_view(tt_view(w, s_in, s_out), 32, 24, kernel), w)
    f = tt_general(w, s_in, s_out, list(ranks))
    assert f.ranks == ranks and f.clamped == ()
    assert f.rel_error(w) < 1e-10
    # Unfolding ranks are the exact TT ranks: those of our view are the built ones; reading the raw
    # (O, I, kh, kw) memory with the same mode labels but without the permutation (TDC-R's mistake) is not.
    def unfolding_ranks(t):
        return tuple(int(torch.linalg.matrix_rank(t.reshape(math.prod(t.shape[:k + 1]), -1)))
                     for k in range(t.ndim - 1))

    assert unfolding_ranks(tt_view(w, s_in, s_out)) == ranks
    mislabelled = unfolding_ranks(w.reshape(*s_in, 9, *s_out))
    assert any(a > b for a, b in zip(mislabelled, ranks, strict=True))


def test_error_decreases_with_the_max_rank():
    w = torch.randn(48, 32, 3, 3, generator=_gen(3), dtype=torch.float64)
    errors = [tt_general(w, 2, 2, r).error for r in (1, 2, 4, 8, 16, 32, 64, 128)]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:], strict=False))
    assert errors[0] > 0.9 and errors[-1] < 1e-10
    lin = torch.randn(60, 40, generator=_gen(4), dtype=torch.float64)
    lerr = [tt_general(lin, 2, 2, r).error for r in (1, 3, 6, 12, 24, 48)]
    assert all(b <= a + 1e-12 for a, b in zip(lerr, lerr[1:], strict=False)) and lerr[-1] < 1e-10


def test_requested_ranks_and_clamping_are_reported():
    w = torch.randn(32, 24, 3, 3, generator=_gen(5))
    # modes (4, 6, 9, 4, 8): bond 1 ≤ r_0·6 = 24 (left core), bond 2 ≤ 4·r_3 = 16 (right core)
    f = tt_general(w, (4, 6), (4, 8), [4, 30, 20, 4])
    assert f.requested_ranks == (4, 30, 20, 4)
    assert f.ranks == (4, 24, 16, 4)
    assert f.clamped == ((1, 30, 24), (2, 20, 16))
    assert f.cores[0].dtype == torch.float32


def test_tt_general_validation():
    w = torch.randn(32, 24, 3, 3)
    with pytest.raises(ValueError, match="conv kernel"):
        tt_general(torch.randn(4, 5, 6), 2, 2, 4)
    with pytest.raises(ValueError, match="conv kernel"):
        tt_general(torch.ones(4, 4, dtype=torch.int64), 2, 2, 4)
    with pytest.raises(ValueError, match="multiply to"):
        tt_general(w, (5, 5), 2, 4)
    with pytest.raises(ValueError, match="need 4 inner ranks"):
        tt_general(w, 2, 2, [4, 4])
    with pytest.raises(ValueError, match="≥ 1"):
        tt_general(w, 2, 2, [4, 0, 4, 4])
    f = tt_general(w, 2, 2, 4)
    with pytest.raises(ValueError, match="core 1"):
        TTGeneralFactors(cores=(f.cores[0], f.cores[0], *f.cores[2:]), shape_in=f.shape_in, shape_out=f.shape_out,
                         kernel=f.kernel, requested_ranks=f.requested_ranks, error=0.0)


# ---------------------------------------------------------------------------------------------- module

GEOMETRIES = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=1),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(kernel_size=3, padding="same", padding_mode="reflect"),
]


def _dense(layer, seed=0):
    torch.manual_seed(seed)
    for p in layer.parameters():
        nn.init.normal_(p, std=0.2)
    return layer


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_conv_module_matches_the_dense_conv(geom):
    conv = _dense(nn.Conv2d(24, 32, bias=True, **geom))
    x = torch.randn(3, 24, 13, 11, generator=_gen(1))
    f = tt_general(conv.weight, 2, (4, 8), BIG)
    module = load_tt_general(tt_general_structure(conv, 2, (4, 8), BIG), conv, f)
    assert isinstance(module, TTGeneralConv2d)
    with torch.no_grad():
        ref, out = conv(x), module(x)
    assert out.shape == ref.shape and _rel(out, ref) < 1e-5  # float32 at full rank
    # at a truncated rank the module computes exactly the conv with the reconstructed kernel
    f8 = tt_general(conv.weight.double(), 2, (4, 8), 6)
    dense8 = _dense(nn.Conv2d(24, 32, bias=True, **geom)).double()
    with torch.no_grad():
        dense8.weight.copy_(f8.reconstruct())
        dense8.bias.copy_(conv.bias)
        m8 = load_tt_general(tt_general_structure(dense8, 2, (4, 8), 6), dense8, f8)
        assert _rel(m8(x.double()), dense8(x.double())) < 1e-12


def test_linear_module_matches_the_dense_linear():
    lin = _dense(nn.Linear(60, 100))
    x = torch.randn(4, 7, 60, generator=_gen(2))  # (batch, tokens, features)
    f = tt_general(lin.weight, 2, 3, BIG)
    module = load_tt_general(tt_general_structure(lin, 2, 3, BIG), lin, f)
    assert isinstance(module, TTGeneralLinear)
    with torch.no_grad():
        assert _rel(module(x), lin(x)) < 1e-5
        assert _rel(module(x[0, 0]), lin(x[0, 0])) < 1e-5  # unbatched input
    nobias = _dense(nn.Linear(60, 100, bias=False))
    f = tt_general(nobias.weight.double(), (6, 10), (10, 10), 5)
    m = load_tt_general(tt_general_structure(nobias.double(), (6, 10), (10, 10), 5), nobias, f)
    assert m.bias is None
    with torch.no_grad():
        assert _rel(m(x.double()), x.double() @ f.reconstruct().T) < 1e-12


def _count_macs(module, x):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() // 2  # a MAC is 2 FLOPs to the counter


@pytest.mark.parametrize("geom", GEOMETRIES[:5])
def test_conv_cost_is_exact(geom):
    conv = nn.Conv2d(24, 32, **geom)
    module = tt_general_structure(conv, (2, 3, 4), (4, 8), [2, 5, 7, 6, 3])
    x = torch.randn(1, 24, 15, 9)
    params, macs = tt_general_cost(module, in_hw=(15, 9))
    assert params == sum(p.numel() for p in module.parameters())
    assert macs == _count_macs(module, x)


def test_cost_by_hand():
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=True)
    module = tt_general_structure(conv, (2, 3), (2, 4), [2, 3, 4, 2])
    # cores: (1,2,2) (2,3,3) (3,9,4) (4,2,2) (2,4,1): 4 + 18 + 108 + 16 + 8 = 154 params, + 8 bias
    # MACs at 10×10: 100·3·2·2 + 100·1·6·3 + 100·3·9·4 + 100·1·4·4 + 100·2·2·4
    assert tt_general_cost(module, in_hw=(10, 10)) == (162, 1200 + 1800 + 10800 + 1600 + 1600)
    lin = nn.Linear(6, 8, bias=False)
    lm = tt_general_structure(lin, (2, 3), (2, 4), [2, 3, 2])
    # in: 3·(1·2)·2 + 1·(2·3)·3 ; out: 1·3·(2·2) + 2·(2·4·1), all ×5 tokens
    assert tt_general_cost(lm, tokens=5) == (4 + 18 + 12 + 8, 5 * (12 + 18 + 12 + 16))
    assert tt_general_cost(lm, tokens=5)[1] == _count_macs(lm, torch.randn(1, 5, 6))


def test_linear_cost_is_exact():
    lin = nn.Linear(64, 90)
    module = tt_general_structure(lin, (4, 4, 4), (9, 10), 7)
    params, macs = tt_general_cost(module, tokens=11)
    assert params == sum(p.numel() for p in module.parameters())
    assert macs == _count_macs(module, torch.randn(1, 11, 64))


def test_structure_and_load_validation():
    with pytest.raises(ValueError, match="groups=1"):
        tt_general_structure(nn.Conv2d(8, 8, 3, groups=2), 2, 2, 4)
    with pytest.raises(ValueError, match="symmetric integer"):
        tt_general_structure(nn.Conv2d(8, 8, 4, padding="same"), 2, 2, 4)
    with pytest.raises(ValueError, match="not BatchNorm2d"):
        tt_general_structure(nn.BatchNorm2d(8), 2, 2, 4)
    with pytest.raises(ValueError, match="cost needs in_hw"):
        tt_general_cost(tt_general_structure(nn.Conv2d(8, 8, 3), 2, 2, 4))
    conv = nn.Conv2d(8, 8, 3)
    f = tt_general(conv.weight, 2, 2, 3)
    with pytest.raises(ValueError, match="do not fit"):
        load_tt_general(tt_general_structure(conv, 2, 2, 4), conv, f)
    lin = nn.Linear(8, 8)
    with pytest.raises(ValueError, match="do not fit"):  # conv factors have one bond more than a Linear's
        load_tt_general(tt_general_structure(lin, 2, 2, [2, 3, 2]), lin, tt_general(conv.weight, 2, 2, [2, 3, 3, 2]))


def test_module_traces_with_fx():
    conv = _dense(nn.Conv2d(12, 16, 3, stride=2, padding=1))
    module = load_tt_general(tt_general_structure(conv, 2, 2, 4), conv, tt_general(conv.weight, 2, 2, 4))
    traced = torch.fx.symbolic_trace(module)
    x = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        assert torch.equal(traced(x), module(x))


@pytest.mark.parametrize(("kind", "dynamo"), [("conv", True), ("linear", False)])
def test_onnx_export_is_standard_and_matches(kind, dynamo):
    """Both exporters the project uses (dynamo first, TorchScript as fallback) give standard ops, dynamic batch."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if kind == "conv":
        layer, x = _dense(nn.Conv2d(24, 32, 3, stride=2, padding=1)), torch.randn(2, 24, 9, 9)
    else:
        layer, x = _dense(nn.Linear(60, 100)), torch.randn(2, 60)
    module = load_tt_general(tt_general_structure(layer, 2, 2, 5), layer, tt_general(layer.weight, 2, 2, 5)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module, (x,), dynamo=True, verbose=False, opset_version=18,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
            model = program.model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["input"],
                              dynamic_axes={"input": {0: "batch"}})
            model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model, full_check=True)
    compute = {n.op_type for n in model.graph.node} - {"Shape", "Gather", "Unsqueeze", "Concat", "Constant"}
    assert compute <= {"Reshape", "Conv", "MatMul", "Add"} and {n.domain for n in model.graph.node} <= {""}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x5 = torch.randn(5, *x.shape[1:], generator=_gen(7))  # another batch size than the export example
    out = sess.run(None, {sess.get_inputs()[0].name: x5.numpy()})[0]
    with torch.no_grad():
        assert out.shape == tuple(layer(x5).shape)
        assert _rel(torch.from_numpy(out), module(x5)) < 1e-5
