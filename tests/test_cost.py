"""Measured layer costs: ONNX layer graphs, the interleaved timer, the persistent cache and the cost table."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from tdexport.cost import (
    MULTIPLES,
    CostCache,
    CostPoint,
    CostTable,
    Geometry,
    LayerCosts,
    Target,
    auto_round_to,
    candidate_ranks,
    chain_macs,
    cost_key,
    default_cache_path,
    fingerprint,
    layer_onnx,
    parse_target,
    profile_costs,
    time_graphs,
)
from tdexport.errors import UsageError
from tdexport.layers import chain_cost, structure_for

# Tiny timing budgets: these tests check structure, not speed.
FAST = {"rounds": 2, "min_time_s": 0.004}


def _run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _randomized(modules):
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.normal_(0, 0.5)
    return modules


CONV_CASES = [
    # (conv kwargs, in_hw, method, ranks)
    (dict(in_channels=16, out_channels=24, kernel_size=3, stride=2, padding=1, dilation=2, bias=True), (17, 19),
     "dense", ()),
    (dict(in_channels=16, out_channels=24, kernel_size=3, stride=2, padding=1, dilation=2, bias=True), (17, 19),
     "tucker2", (8, 6)),
    (dict(in_channels=16, out_channels=24, kernel_size=3, stride=2, padding=1, dilation=2, bias=True), (17, 19),
     "tt", (8, 6)),
    (dict(in_channels=12, out_channels=10, kernel_size=(3, 5), stride=(1, 2), padding=(1, 2), bias=False), (11, 13),
     "cp", (7,)),
    (dict(in_channels=12, out_channels=10, kernel_size=3, padding="same", bias=True), (9, 9), "tucker2", (4, 5)),
    (dict(in_channels=32, out_channels=16, kernel_size=1, stride=2, bias=True), (10, 10), "svd", (8,)),
    (dict(in_channels=32, out_channels=16, kernel_size=1, bias=False), (10, 10), "dense", ()),
]


@pytest.mark.parametrize(("kwargs", "in_hw", "method", "ranks"), CONV_CASES)
def test_conv_graph_equals_torch_chain(kwargs, in_hw, method, ranks):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    chain = [conv] if method == "dense" else list(structure_for(method, conv, ranks))
    _randomized(chain)
    geometry = Geometry.of(conv, in_hw)
    x = torch.randn(2, conv.in_channels, *in_hw)
    got = _run_onnx(layer_onnx(geometry, method, ranks, 2, chain=chain), x.numpy())
    want = nn.Sequential(*chain)(x).detach().numpy()
    assert got.shape == want.shape == geometry.output_shape(2)
    np.testing.assert_allclose(got, want, atol=2e-5 * max(1.0, float(np.abs(want).max())), rtol=0)


@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize(("method", "ranks"), [("dense", ()), ("svd", (4,))])
def test_linear_graph_equals_torch_chain(tokens, method, ranks):
    torch.manual_seed(1)
    linear = nn.Linear(20, 12, bias=True)
    chain = [linear] if method == "dense" else list(structure_for("svd", linear, ranks))
    _randomized(chain)
    geometry = Geometry.of(linear, tokens=tokens)
    x = torch.randn(*geometry.input_shape(3))
    got = _run_onnx(layer_onnx(geometry, method, ranks, 3, chain=chain), x.numpy())
    want = nn.Sequential(*chain)(x).detach().numpy()
    assert got.shape == want.shape == geometry.output_shape(3)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_random_weight_graphs_have_the_chain_shapes():
    geometry = Geometry("conv", 16, 24, (3, 3), stride=(2, 2), padding=(1, 1), in_hw=(15, 15), bias=True)
    x = np.random.default_rng(0).standard_normal(geometry.input_shape(1)).astype(np.float32)
    for method, ranks in [("dense", ()), ("tucker2", (8, 8)), ("cp", (6,))]:
        out = _run_onnx(layer_onnx(geometry, method, ranks, 1), x)
        assert out.shape == geometry.output_shape(1) == (1, 24, 8, 8)
        assert np.isfinite(out).all() and 0.05 < float(out.std()) < 20  # unit-scale, far from denormals
    assert layer_onnx(geometry, "tucker2", (8, 8), 1) == layer_onnx(geometry, "tucker2", (8, 8), 1)


def test_geometry_key_and_errors():
    a = Geometry.of(nn.Conv2d(8, 8, 3, padding=1), (16, 16))
    b = Geometry.of(nn.Conv2d(8, 8, 3, padding=1), (16, 16))
    assert a == b and a.key == b.key == "conv:i8-o8-k3x3-s1x1-p1x1-d1x1-g1-b1-hw16x16"
    assert a.key != Geometry.of(nn.Conv2d(8, 8, 3, padding=1), (8, 8)).key
    assert Geometry.of(nn.Linear(4, 3), tokens=7).key == "linear:i4-o3-b1-t7"
    with pytest.raises(ValueError, match="in_hw|input"):
        Geometry.of(nn.Conv2d(8, 8, 3))
    with pytest.raises(ValueError, match="symmetric"):
        Geometry.of(nn.Conv2d(8, 8, 2, padding="same"), (8, 8))
    with pytest.raises(ValueError, match="Conv2d and Linear"):
        Geometry.of(nn.ReLU())


@pytest.mark.parametrize(("text", "backend", "batch"),
                         [("ort-cpu", "ort-cpu", 1), ("ort-cpu:32", "ort-cpu", 32), (" ORT-CUDA:4 ", "ort-cuda", 4),
                          ("trt:8", "trt", 8), ("ort-trt", "ort-trt", 1)])
def test_parse_target_accepts(text, backend, batch):
    target = parse_target(text)
    assert (target.backend, target.batch, target.precision, target.threads) == (backend, batch, "fp32", None)
    assert str(target) == f"{backend}:{batch}"


@pytest.mark.parametrize("text", ["", ":4", "ort-cpu:", "ort-cpu:0", "ort-cpu:-1", "ort-cpu:x", "ort-cpu:1.5",
                                  "ort-cpu:1:2", "torch", "cpu", "onnxruntime:1"])
def test_parse_target_rejects_naming_the_form(text):
    with pytest.raises(UsageError, match=r"BACKEND\[:BATCH\]"):
        parse_target(text)


def test_target_validates_fields():
    with pytest.raises(UsageError):
        Target("ort-cpu", batch=0)
    with pytest.raises(UsageError):
        Target("ort-cpu", precision="int8")
    with pytest.raises(UsageError):
        Target("ort-cpu", threads=0)


def test_fingerprint_and_key_change_with_everything_that_changes_a_timing():
    geometry = Geometry("conv", 8, 8, (3, 3), padding=(1, 1), in_hw=(8, 8))
    fp = fingerprint(Target("ort-cpu"))
    assert {"backend", "cpu", "threads", "onnxruntime", "onnx", "torch", "precision", "runner"} <= set(fp)
    assert fp["cpu"] and fp["onnxruntime"]
    json.dumps(fp)  # JSON-ready
    base = cost_key(Target("ort-cpu"), geometry, "tucker2", (4, 4))
    assert base == cost_key(Target("ort-cpu"), geometry, "tucker2", (4, 4))
    others = {
        cost_key(Target("ort-cpu", batch=2), geometry, "tucker2", (4, 4)),
        cost_key(Target("ort-cpu", threads=1), geometry, "tucker2", (4, 4)),
        cost_key(Target("ort-cuda"), geometry, "tucker2", (4, 4)),
        cost_key(Target("ort-cpu"), geometry, "tucker2", (4, 8)),
        cost_key(Target("ort-cpu"), geometry, "cp", (4,)),
        cost_key(Target("ort-cpu"), Geometry("conv", 8, 8, (3, 3), padding=(1, 1), in_hw=(9, 9)), "tucker2", (4, 4)),
    }
    assert base not in others and len(others) == 6


def test_whole_model_entries_round_trip_through_the_file(tmp_path):
    target = Target("ort-cpu", batch=4)
    cache = CostCache(tmp_path / "costs.json")
    what = {"kind": "speedup", "model": "abc", "structure": "def"}
    assert cache.lookup(target, what) is None
    cache.record(target, what, {"ms": 2.5, "speedup": 1.5, "original_ms": 3.75})
    cache.flush()
    again = CostCache(tmp_path / "costs.json")
    assert again.lookup(target, what) == {"ms": 2.5, "speedup": 1.5, "original_ms": 3.75, "backend": "ort-cpu",
                                          "batch": 4, **what}
    assert again.lookup(Target("ort-cpu", batch=8), what) is None
    assert again.lookup(target, {**what, "structure": "xyz"}) is None
    assert again.hits == 1 and cache.measured == 1
    with pytest.raises(ValueError, match="non-negative 'ms'"):
        cache.record(target, what, {"speedup": 1.5})
    assert CostCache(tmp_path / "costs.json", enabled=False).lookup(target, what) is None


def test_default_cache_path(monkeypatch, tmp_path):
    monkeypatch.setenv("TDEXPORT_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_path() == tmp_path / "c" / "costs.json"
    monkeypatch.setenv("TDEXPORT_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_path() == tmp_path / "x" / "tdexport" / "costs.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / ".cache" / "tdexport" / "costs.json"


def test_candidate_ranks_are_aligned_capped_and_bounded():
    g = Geometry("conv", 64, 100, (3, 3), padding=(1, 1), in_hw=(8, 8))
    tucker = candidate_ranks(g, "tucker2")
    assert tucker[-1] == (100, 64) and all(r_out % 8 == 0 or r_out == 100 for r_out, _ in tucker)
    assert all(r_in % 8 == 0 for _, r_in in tucker) and len(tucker) == len(set(tucker)) <= 8
    assert candidate_ranks(g, "tucker2", round_to=32) == [(32, 32), (64, 32), (96, 64), (100, 64)]
    assert len(candidate_ranks(g, "svd", round_to=1, max_points=3)) == 3
    assert candidate_ranks(g, "svd", round_to=1)[-1] == (64,)
    assert candidate_ranks(Geometry("conv", 4, 4, (3, 3), padding=(1, 1), in_hw=(8, 8)), "cp") == [(4,)]
    with pytest.raises(ValueError, match="unknown factorization method"):
        candidate_ranks(g, "tensorring")


def _layers():
    """Three 3×3 convs of one geometry (two Tucker-2, one CP), a 1×1 conv, a Linear and a dense-only conv."""
    torch.manual_seed(0)
    a, b, d = (nn.Conv2d(8, 8, 3, padding=1) for _ in range(3))
    c, fc = nn.Conv2d(8, 16, 1), nn.Linear(16, 10)
    return [("a", a, (8, 8), 1, "tucker2"), ("b", b, (8, 8), 1, "tucker2"), ("c", c, (8, 8), 1, "svd"),
            ("fc", fc, None, 1, "svd"), ("stem", nn.Conv2d(3, 8, 3), (8, 8), 1, None), ("d", d, (8, 8), 1, "cp")]


def _expected_graphs(layers):
    seen = {}
    for _, module, in_hw, tokens, method in layers:
        g = Geometry.of(module, in_hw, tokens)
        seen.setdefault(g, set()).add(("dense", ()))
        if method:
            seen[g] |= {(method, r) for r in candidate_ranks(g, method)}
    return sum(len(v) for v in seen.values())


def test_profile_twice_measures_nothing_the_second_time(monkeypatch, tmp_path):
    monkeypatch.setenv("TDEXPORT_CACHE_DIR", str(tmp_path))
    layers, target = _layers(), Target("ort-cpu", threads=1)
    first_cache = CostCache()
    first = profile_costs(layers, target, cache=first_cache, progress=False, **FAST)
    # identical geometries measured once: "a" and "b" share every graph
    # 4 geometries timed dense once each, then the chain ranks: tucker2 (8, 8), cp (8,), svd (8,), svd (8,), (10,)
    assert first_cache.measured == _expected_graphs(layers) == 4 + 1 + 1 + 1 + 2
    assert first.layers["a"] is first.layers["b"]
    assert first.dense_ms("d") == first.dense_ms("a") and first.measured_points("d")[0].ranks == (8,)
    assert (tmp_path / "costs.json").is_file()
    second_cache = CostCache()
    second = profile_costs(layers, target, cache=second_cache, progress=False, **FAST)
    assert second_cache.measured == 0 and second_cache.hits == first_cache.measured
    assert second.to_dict() == first.to_dict()
    for name in ("a", "c", "fc", "stem"):
        assert first.dense_ms(name) > 0
    assert [p.ranks for p in first.measured_points("a")] == candidate_ranks(first.layers["a"].geometry, "tucker2")
    with pytest.raises(ValueError, match="no factor-chain"):
        first.chain_ms("stem", (4, 4))
    with pytest.raises(KeyError, match="nope"):
        first.dense_ms("nope")
    # --no-cache measures again and leaves the file alone
    before = (tmp_path / "costs.json").read_bytes()
    off = CostCache(enabled=False)
    profile_costs(layers[:1], target, cache=off, progress=False, **FAST)
    assert off.measured == 1 + len(candidate_ranks(Geometry.of(layers[0][1], (8, 8)), "tucker2")) and off.hits == 0
    assert (tmp_path / "costs.json").read_bytes() == before
    # another batch or thread count is another key: measured again
    other = CostCache()
    profile_costs(layers[:1], Target("ort-cpu", batch=2, threads=1), cache=other, progress=False, **FAST)
    profile_costs(layers[:1], Target("ort-cpu", threads=2), cache=other, progress=False, **FAST)
    assert other.measured == 2 * off.measured


def test_corrupt_cache_is_a_warning_and_gets_rewritten(tmp_path):
    path = tmp_path / "costs.json"
    path.write_text("{not json")
    cache = CostCache(path)
    with pytest.warns(RuntimeWarning, match="unreadable cost cache"):
        table = profile_costs(_layers()[:1], Target("ort-cpu", threads=1), cache=cache, progress=False, **FAST)
    assert cache.measured > 0 and table.dense_ms("a") > 0
    data = json.loads(path.read_text())
    assert len(data["entries"]) == cache.measured
    path.write_text(json.dumps({"format": "tdexport-costs", "version": 1, "entries": {"k": {"ms": "fast"}}}))
    assert len(CostCache(path)) == 0  # a malformed entry is dropped, silently


def test_interpolation_in_macs_is_exact_at_points_and_clamped():
    g = Geometry("conv", 64, 64, (3, 3), padding=(1, 1), in_hw=(16, 16))
    ranks = [(16, 16), (32, 32), (64, 64)]
    ms = [1.0, 3.0, 2.0]  # deliberately not monotone: interpolation follows the measurements
    points = tuple(CostPoint(r, chain_macs(g, "tucker2", r), t) for r, t in zip(ranks, ms, strict=True))
    table = CostTable(Target("ort-cpu"), {"x": LayerCosts(g, "tucker2", 2.5, points)})
    for r, t in zip(ranks, ms, strict=True):
        assert table.chain_ms("x", r) == t
    assert table.chain_ms("x", (8, 8)) == 1.0 and table.chain_ms("x", (8, 4)) == 1.0  # clamped below
    mid = table.chain_ms("x", (24, 24))
    macs = chain_macs(g, "tucker2", (24, 24))
    assert points[0].macs < macs < points[1].macs
    assert mid == pytest.approx(1.0 + 2.0 * (macs - points[0].macs) / (points[1].macs - points[0].macs))
    values = [table.chain_ms("x", (r, r)) for r in range(16, 33)]
    assert values == sorted(values)  # monotone between two measured points that increase
    assert 2.0 <= table.chain_ms("x", (48, 40)) <= 3.0
    assert table.chain_ms("x", (64, 64)) == 2.0 and table.dense_ms("x") == 2.5
    assert chain_macs(g, "tucker2", (32, 32)) == chain_cost(structure_for("tucker2", nn.Conv2d(64, 64, 3, padding=1),
                                                                          (32, 32)), in_hw=(16, 16))[1]
    # tt is timed as the Tucker-2 chain it lowers to
    tt = CostTable(Target("ort-cpu"), {"x": LayerCosts(g, "tt", 2.5, points)})
    assert tt.chain_ms("x", (24, 24)) == pytest.approx(mid)
    restored = CostTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert restored.to_dict() == table.to_dict() and restored.chain_ms("x", (24, 24)) == pytest.approx(mid)


def test_time_graphs_shape_of_result():
    g = Geometry("conv", 8, 8, (3, 3), padding=(1, 1), in_hw=(8, 8))
    graphs = {"dense": layer_onnx(g, "dense", (), 1), "chain": layer_onnx(g, "tucker2", (4, 4), 1),
              "other-batch": layer_onnx(g, "dense", (), 3)}
    times = time_graphs(graphs, Target("ort-cpu", threads=1), **FAST)
    assert list(times) == list(graphs) and all(math.isfinite(t) and t > 0 for t in times.values())
    assert time_graphs({}, Target("ort-cpu")) == {}


def test_a_16_channel_conv_does_not_pay_at_rank_12(tmp_path):
    # Three convs whose MACs add up to 73 % of the dense conv's, at 12 channels (no vector-block multiple):
    # the extra nodes and intermediate tensors cost more than the saved MACs. Measured on a 2-core AVX-512
    # Xeon, threads 1 or 2, batch 1, 8 or 32: the chain took 1.55–1.65× the dense time in 27 runs.
    g = Geometry("conv", 16, 16, (3, 3), padding=(1, 1), in_hw=(32, 32))
    assert chain_macs(g, "tucker2", (12, 12)) > 0.7 * chain_macs(g, "dense", ())
    layer = ("conv", nn.Conv2d(16, 16, 3, padding=1, bias=False), (32, 32), 1, "tucker2")
    table = profile_costs([layer], Target("ort-cpu"), cache=CostCache(enabled=False), candidates=(0.75,),
                          round_to=4, progress=False)
    assert [p.ranks for p in table.measured_points("conv")] == [(12, 12)]
    assert table.chain_ms("conv", (12, 12)) >= table.dense_ms("conv")


def test_auto_round_to_picks_a_multiple_with_evidence_and_caches(tmp_path):
    cache = CostCache(tmp_path / "costs.json")
    m, evidence = auto_round_to(Target("ort-cpu", threads=1), cache=cache, progress=False, **FAST)
    assert m in MULTIPLES and evidence["chosen"] == m
    assert set(evidence["scores"]) == {str(k) for k in MULTIPLES}
    assert all(math.isfinite(v) and v > 0 for v in evidence["scores"].values())
    assert len(evidence["probes"]) == 2 and cache.measured > 0
    again = CostCache(tmp_path / "costs.json")
    assert auto_round_to(Target("ort-cpu", threads=1), cache=again, progress=False, **FAST) == (m, evidence)
    assert again.measured == 0


def test_progress_bar_and_threads_keyword(capsys):
    target = parse_target("ort-cpu:2", threads=1)
    assert target == Target("ort-cpu", 2, threads=1)
    profile_costs(_layers()[:1], target, cache=CostCache(enabled=False), progress=True, **FAST)
    assert "layer costs on ort-cpu:2" in capsys.readouterr().err


def test_a_backend_missing_here_is_backend_unavailable():
    from tdexport.errors import BackendUnavailable
    from tdexport.runtime import available_backends

    if available_backends()["ort-cuda"] is None:
        pytest.skip("ort-cuda works on this machine")
    assert fingerprint(Target("ort-cuda"))["gpu"] is None
    with pytest.raises(BackendUnavailable):
        profile_costs(_layers()[:1], Target("ort-cuda"), cache=CostCache(enabled=False), progress=False, **FAST)


@pytest.mark.parametrize("geometry, method", [
    (Geometry("conv", 64, 96, (3, 3), stride=(2, 2), padding=(1, 1), in_hw=(15, 17)), "tucker2"),
    (Geometry("conv", 64, 96, (3, 3), padding=(2, 2), dilation=(2, 2), in_hw=(12, 12)), "tt"),
    (Geometry("conv", 32, 48, (5, 3), stride=(2, 1), padding=(2, 1), in_hw=(11, 9)), "cp"),
    (Geometry("conv", 256, 128, (1, 1), stride=(2, 2), in_hw=(14, 14)), "svd"),
    (Geometry("linear", 300, 200, bias=True, tokens=7), "svd"),
])
def test_chain_macs_formula_equals_counting_the_chain(geometry, method):
    import random

    rng = random.Random(0)
    n_ranks = 2 if method in ("tucker2", "tt") else 1
    for _ in range(20):
        ranks = tuple(rng.randint(1, 200) for _ in range(n_ranks))
        counted = chain_cost(structure_for(method, geometry.dummy(), ranks), in_hw=geometry.in_hw,
                             tokens=geometry.tokens)[1]
        assert chain_macs(geometry, method, ranks) == counted


def test_round_to_auto_on_tensorrt_follows_the_tensor_core_rule():
    from tdexport.cost import tensorrt_alignment

    assert tensorrt_alignment("trt", "fp16")[0] == 8 and tensorrt_alignment("ort-trt", "int8")[0] == 32
    assert tensorrt_alignment("trt", "int8")[1]["chosen"] == 32
    assert tensorrt_alignment("trt", "fp32") is None and tensorrt_alignment("ort-cpu", "int8") is None
