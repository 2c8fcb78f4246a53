"""The seeds' other methods behind the planner: general TT, Tucker-1 stems, DCT reordering and svt:R ranks.

Full-rank chains reproduce the layer; truncated plans count params and MACs exactly as the model has them;
plans reload; misplaced options and malformed values exit 2.
"""

import json
import math

import pytest
import torch
from counting import count_macs
from test_layers import CONV_GEOMETRIES
from test_layers import _conv as _layer_conv
from test_layers import _input as _x

import tdexport
from tdexport.errors import UsageError
from tdexport.factorize import _decompose, _Spectra, parse_tt_shape, reorder_storage_ratio
from tdexport.layers_reorder import ReorderedConv2d
from tdexport.layers_tt import TTGeneralConv2d
from tdexport.plan import Plan, apply_plan
from tdexport.planner import compress


def _rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _conv(geom):
    return _layer_conv(12, 10, True, **geom)


@pytest.mark.parametrize("geom", CONV_GEOMETRIES)
@pytest.mark.parametrize("method", ["ttg", "tucker1", "reorder"])
def test_full_rank_chains_reproduce_the_layer(method, geom):
    conv = _conv(geom)
    if method == "ttg":
        modes = [[4, 3], [5, 2]]
        kh, kw = conv.kernel_size
        ranks = [10**6] * 4  # more than the cores carry: clamped to the exact TT ranks
        from tdexport.factor.tt_general import clamp_tt_ranks, tt_mode_sizes

        ranks = list(clamp_tt_ranks(tt_mode_sizes(*modes, (kh, kw)), ranks)[1])
    elif method == "tucker1":
        modes, ranks = None, [10]
    else:
        modes, ranks = None, [3, -(-conv.weight.numel() // 3)]
    seq, err = _decompose(method, conv, ranks, _Spectra(conv.weight.detach()), iters=0, cp_iters=0, modes=modes)
    assert err < 1e-12
    with torch.no_grad():
        assert _rel(seq(_x(12)), conv(_x(12))) < 1e-12


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return tdexport.create_model("resnet20", weights="random").eval()


@pytest.mark.parametrize("options", [
    dict(format="tt", tt_type="general", rank="ratio:0.4", include_classifier=True),
    dict(format="tt", tt_type="general", rank="energy:0.7", tt_shape=("3",)),
    dict(format="tucker", rank="ratio:0.5", include_stem=True, stem_method="tucker1"),
    dict(format="ht2", rank="ratio:0.5", include_stem=True),
])
def test_truncated_plans_count_params_and_macs_exactly(resnet20, options):
    c = compress(resnet20, input_shape=(3, 32, 32), **options)
    totals = c.plan.totals
    assert totals["params_after"] == sum(p.numel() for p in c.model.parameters())
    assert totals["params_after"] < totals["params_before"]
    # Conv MACs counted by hooks on the compressed model; a TT Linear (the classifier) runs matmuls, not
    # nn.Linear, so its planned MACs are added from the plan.
    x = torch.zeros(1, 3, 32, 32)
    tt_linear = sum(e.macs_after for e in c.plan.layers if e.decision == "decomposed" and e.type == "Linear"
                    and e.method == "ttg")
    assert count_macs(c.model, x) + tt_linear == totals["macs_after"] < totals["macs_before"]
    if options.get("include_stem"):
        assert c.plan.layers[0].method == "tucker1" and c.plan.layers[0].decision == "decomposed"
    # plan.json round trip: the rebuilt architecture with the saved weights computes the same outputs
    rebuilt = apply_plan(resnet20, Plan.from_dict(json.loads(json.dumps(c.plan.to_dict()))))
    rebuilt.load_state_dict(c.model.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), c.model.eval()(x))


def test_general_tt_modes_ranks_and_clamping_are_recorded(resnet20):
    plan = compress(resnet20, format="tt", tt_type="general", rank="6", input_shape=(3, 32, 32),
                    tt_shape=("16=4x4", "2,1")).plan
    decomposed = [e for e in plan.layers if e.decision == "decomposed"]
    assert plan.format == "ttg" and decomposed and all(e.method == "ttg" for e in decomposed)
    first = decomposed[0]  # a 16 → 16 conv: explicit 4×4 sizes on both axes
    assert first.modes == [[4, 4], [4, 4]]
    # rank 6 everywhere is more than the first and last bonds can carry (4 and 4): clamped and said so
    assert first.ranks[0] == 4 and first.ranks[-1] == 4 and "clamped" in first.reason
    wide = next(e for e in decomposed if e.shape[0] == 64)
    assert len(wide.modes[0]) == 2 and len(wide.modes[1]) == 1 and math.prod(wide.modes[0]) == wide.shape[1]
    assert plan.options["tt_modes"] == [2, 1]


def test_general_tt_module_is_what_the_plan_says(resnet20):
    c = compress(resnet20, format="tt", tt_type="general", rank="ratio:0.5", input_shape=(3, 32, 32))
    entry = next(e for e in c.plan.layers if e.decision == "decomposed")
    module = c.model.get_submodule(entry.name)[0]
    assert isinstance(module, TTGeneralConv2d)
    assert [list(module.shape_in), list(module.shape_out)] == entry.modes and list(module.ranks) == entry.ranks


def test_reorder_saves_storage_not_macs_and_exports_dense(resnet20, tmp_path):
    c = compress(resnet20, format="reorder", groups=3, coef_ratio=0.25, input_shape=(3, 32, 32))
    plan = c.plan
    decomposed = [e for e in plan.layers if e.decision == "decomposed"]
    assert decomposed and all(e.method == "reorder" for e in decomposed)
    assert plan.totals["macs_after"] == plan.totals["macs_before"]
    for e in decomposed:
        g, t = e.ranks
        n = -(-math.prod(e.shape) // g)
        assert g == 3 and t == math.ceil(0.25 * n - 1e-9)
        assert e.storage_ratio == pytest.approx(reorder_storage_ratio(math.prod(e.shape), g, t))
        assert e.storage_ratio < 1 and e.params_after < e.params_before
        module = c.model.get_submodule(e.name)[0]
        assert isinstance(module, ReorderedConv2d) and module.coefficients.shape == (g, t)
    assert plan.totals["storage_bits_after"] < plan.totals["storage_bits_before"]
    from tdexport.export.onnx import export_onnx

    result = export_onnx(c.model, tmp_path / "r.onnx", input_shape=(3, 32, 32), simplify=False)
    assert result.parity.rel_l2_err < 1e-4
    import onnx

    ops = {n.op_type for n in onnx.load(tmp_path / "r.onnx").graph.node}
    assert "Conv" in ops and not ops & {"DFT", "Gather", "ScatterND"}  # folded back: no rebuild in the graph


def test_reorder_progressive_keeps_less_of_bigger_layers(resnet20):
    plan = compress(resnet20, format="reorder", groups=4, coef_ratio=1.0, progressive=True, progressive_ref=64,
                    input_shape=(3, 32, 32)).plan
    kept = {e.name: e.ranks[1] / -(-math.prod(e.shape) // 4) for e in plan.layers if e.decision == "decomposed"}
    small = next(e for e in plan.layers if e.decision == "decomposed" and e.shape[0] == 16)
    big = next(e for e in plan.layers if e.decision == "decomposed" and e.shape[:2] == [64, 64])
    assert kept[big.name] < kept[small.name]
    assert kept[small.name] == pytest.approx(1 / (1 + math.sqrt(math.prod(small.shape)) / 64), abs=0.01)


def test_svt_rank_rule_hits_the_ratio_per_layer():
    torch.manual_seed(0)
    model = tdexport.create_model("resnet18", weights="random").eval()
    plan = compress(model, format="tucker", rank="svt:0.9", input_shape=(3, 224, 224)).plan
    tucker = [e for e in plan.layers if e.decision == "decomposed" and e.method == "tucker2"]
    assert len(tucker) >= 12
    for e in tucker:
        # the reconstruction is an orthogonal projection of W, so ‖Ŵ‖/‖W‖ = √(1 − rel_err²)
        assert abs(math.sqrt(1 - e.rel_error**2) - 0.9) < 0.01, (e.name, e.ranks, e.rel_error)


def test_svt_works_with_round_to_and_refuses_cp(resnet20):
    plan = compress(resnet20, format="tucker", rank="svt:0.8", round_to=8, input_shape=(3, 32, 32)).plan
    for e in plan.layers:
        if e.decision == "decomposed" and e.method == "tucker2":
            assert all(r % 8 == 0 or r == s for r, s in zip(e.ranks, e.shape[:2], strict=True))
    with pytest.raises(UsageError, match="CP has none"):
        compress(resnet20, format="cp", rank="svt:0.8", input_shape=(3, 32, 32))


@pytest.mark.parametrize("kwargs, message", [
    (dict(format="tucker", tt_type="general"), "applies to --format tt"),
    (dict(format="tt", tt_shape=("2",)), "--tt-type general"),
    (dict(format="tt", tt_type="general", tt_shape=("16=3x5",)), "multiply to 15"),
    (dict(format="tt", tt_type="general", tt_shape=("two",)), "expected N"),
    (dict(format="tt", tt_type="weird"), "special' or 'general"),
    (dict(format="reorder", coef_ratio=1.5), r"in \(0, 1\]"),
    (dict(format="reorder", groups=0), "positive integer"),
    (dict(format="tucker", stem_method="cp"), "tucker1"),
    (dict(format="tt", tt_type="general", rank="macs:2x"), "not ttg"),
])
def test_misplaced_or_malformed_method_options_exit_2(resnet20, kwargs, message):
    with pytest.raises(UsageError, match=message):
        compress(resnet20, input_shape=(3, 32, 32), **kwargs)


def test_parse_tt_shape():
    assert parse_tt_shape([]) == ((2, 2), {})
    assert parse_tt_shape(["3"]) == ((3, 3), {})
    assert parse_tt_shape(["2,1", "64=8x8", "96=4x4x6"]) == ((2, 1), {64: (8, 8), 96: (4, 4, 6)})


def test_edited_general_tt_plan_is_checked(resnet20, tmp_path):
    plan = compress(resnet20, format="tt", tt_type="general", rank="ratio:0.5", input_shape=(3, 32, 32)).plan
    data = plan.to_dict()
    entry = next(e for e in data["layers"] if e["decision"] == "decomposed")
    bad_modes = json.loads(json.dumps(data))
    next(e for e in bad_modes["layers"] if e["name"] == entry["name"])["modes"] = [[3, 5], [4, 4]]
    with pytest.raises(UsageError, match="field 'modes'.*multiply"):
        apply_plan(resnet20, Plan.from_dict(bad_modes))
    too_big = json.loads(json.dumps(data))
    next(e for e in too_big["layers"] if e["name"] == entry["name"])["ranks"][0] = 10_000
    with pytest.raises(UsageError, match="field 'ranks'"):
        apply_plan(resnet20, Plan.from_dict(too_big))
    missing = json.loads(json.dumps(data))
    del next(e for e in missing["layers"] if e["name"] == entry["name"])["modes"]
    with pytest.raises(UsageError, match="needs 'modes'"):
        Plan.from_dict(missing)


def test_cli_formats_write_plans(cli, tmp_path):
    out = tmp_path / "ttg"
    assert cli(["compress", "resnet20", "--weights", "random", "--format", "tt", "--tt-type", "general",
                "--tt-shape", "2", "--rank", "ratio:0.5", "--out", str(out), "-q"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["format"] == "ttg" and any(e["modes"] for e in plan["layers"])
    out = tmp_path / "reorder"
    assert cli(["compress", "resnet20", "--weights", "random", "--format", "reorder", "--groups", "8",
                "--coef-ratio", "0.5", "--out", str(out), "-q"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["format"] == "reorder" and plan["totals"]["storage_bits_after"] < plan["totals"]["storage_bits_before"]
    reloaded = tdexport.load(out)
    assert any(isinstance(m, ReorderedConv2d) for m in reloaded.modules())
    assert cli(["compress", "resnet20", "--weights", "random", "--format", "tt", "--tt-shape", "x",
                "--tt-type", "general", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("method, ranks, modes", [
    ("tucker2", [6, 5], None),
    ("ttg", [3, 7, 7, 3], [[4, 3], [5, 2]]),
    ("ht2", [5, 9, 6], None),
    ("tucker1", [4], None),
])
def test_admm_projection_lands_in_the_rank_set(method, ranks, modes):
    from tdexport.train.admm import project

    torch.manual_seed(0)
    w = torch.randn(10, 12, 3, 3, dtype=torch.float64)
    z = project(w, method, ranks, modes=modes, iters=5)
    assert z.shape == w.shape and _rel(z, w) > 0.05
    # a point of the rank set is its own projection (the same algorithm, the same mode order)
    assert _rel(project(z, method, ranks, modes=modes, iters=5), z) < 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("args, method", [
    (["--format", "tt", "--tt-type", "general"], "ttg"),
    (["--format", "ht2"], "ht2"),
])
def test_admm_runs_end_to_end_for_general_tt_and_ht2(baseline, tmp_path, cli, args, method):
    base, _ = baseline
    out = tmp_path / "admm"
    assert cli(["admm", "resnet20", "--weights", str(base), *args, "--rank", "ratio:0.5", "--data", "digits",
                "--epochs", "1", "--admm-every", "5", "--device", "cpu", "--out", str(out), "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    decomposed = [e for e in plan["layers"] if e["decision"] == "decomposed"]
    assert decomposed and {e["method"] for e in decomposed if e["type"] == "Conv2d"} == {method}
    assert len(metrics["admm_history"]) == (1437 // 64) // 5
    assert set(metrics["rel_error"]) == {e["name"] for e in decomposed}
    assert 0 <= metrics["decomposed_test_top1"] <= 100
    assert tdexport.load(out) is not None


def test_report_and_totals_state_reorder_storage_apart_from_params_and_macs(resnet20):
    from tdexport.table import totals_line
    from tdexport.validate.markdown import render_markdown
    from tdexport.validate.report import build_report

    plan = compress(resnet20, format="reorder", groups=4, coef_ratio=0.25, input_shape=(3, 32, 32)).plan
    t = plan.totals
    report = build_report(plan=plan)
    assert report["storage"] == {"original_bits": t["storage_bits_before"], "compressed_bits": t["storage_bits_after"],
                                 "ratio": t["storage_bits_before"] / t["storage_bits_after"]}
    assert report["macs"]["original"] == report["macs"]["compressed"]
    assert all(row["storage_ratio"] is not None for row in report["layers"] if row["decision"] == "decomposed")
    assert "weight storage" in render_markdown(report, report["layers"])
    assert f"weight storage {t['storage_bits_before'] / t['storage_bits_after']:.2f}x smaller" in totals_line(plan)
    assert build_report(plan=compress(resnet20, rank="ratio:0.5", input_shape=(3, 32, 32)).plan)["storage"] is None
