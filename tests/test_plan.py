"""Plans: eligibility, exact cost accounting, replay, and apply_plan on a fresh model."""

import json

import pytest
import torch
from counting import count_macs
from torch import nn

import tdexport
from tdexport.errors import UsageError
from tdexport.plan import Plan, apply_plan
from tdexport.planner import profile_layers


def _measured_totals(model, input_shape):
    """Params and conv/linear MACs measured by forward hooks on the built module (independent of the plan)."""
    macs = count_macs(model.eval(), torch.zeros(1, *input_shape))
    return sum(p.numel() for p in model.parameters()), macs


@pytest.fixture(scope="module")
def resnet20_ratio():
    return tdexport.compress("resnet20", format="tucker", rank="ratio:0.5", weights="random")


def test_plan_totals_match_measured_module_costs(resnet20_ratio):
    dense = tdexport.create_model("resnet20", weights="random")
    plan = resnet20_ratio.plan
    assert (plan.totals["params_before"], plan.totals["macs_before"]) == _measured_totals(dense, (3, 32, 32))
    measured = _measured_totals(resnet20_ratio.model, (3, 32, 32))
    assert (plan.totals["params_after"], plan.totals["macs_after"]) == measured
    # ≈2.6× fewer MACs at ratio 0.5 (stem and classifier stay dense)
    assert 2.4 < plan.totals["macs_before"] / plan.totals["macs_after"] < 2.8


def test_plan_layer_entries_and_reasons(resnet20_ratio):
    plan = resnet20_ratio.plan
    by_name = {e.name: e for e in plan.layers}
    assert by_name["conv1"].decision == "kept" and "stem" in by_name["conv1"].reason
    assert by_name["fc"].decision == "kept" and "classifier" in by_name["fc"].reason
    e = by_name["layer2.0.conv1"]
    assert (e.decision, e.method, e.ranks, e.shape) == ("decomposed", "tucker2", [16, 8], [32, 16, 3, 3])
    assert e.params_after == 16 * 8 + 16 * 8 * 9 + 16 * 32
    assert 0 < e.rel_error < 1
    required = {"name", "type", "shape", "method", "ranks", "decision", "reason", "params_before",
                "params_after", "macs_before", "macs_after", "rel_error"}
    d = plan.to_dict()
    assert required <= set(d["layers"][0])
    assert {"model", "format", "rank_rule", "input_shape", "layers", "totals"} <= set(d)
    assert d["model"] == "resnet20" and d["format"] == "tucker2" and d["rank_rule"] == "ratio:0.5"


def test_input_model_is_not_modified():
    dense = tdexport.create_model("resnet20", weights="random")
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    tdexport.compress(dense, format="cp", rank="ratio:0.5", input_shape=(3, 32, 32), cp_iters=5)
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for n, m in dense.named_modules() if n.endswith("conv1"))
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


def test_full_rank_ratio_one_keeps_layers_without_savings():
    c = tdexport.compress("resnet20", rank="ratio:1", weights="random")
    assert all(e.decision == "kept" for e in c.plan.layers)
    assert any("no parameter and MAC saving" in e.reason for e in c.plan.layers)


def test_depthwise_and_globs_are_kept_with_reasons():
    c = tdexport.compress("mobilenet_v2", rank="ratio:0.25", weights="random", num_classes=10,
                          input_shape=(3, 64, 64), exclude=["features.1*"], layers=["features.*"])
    reasons = {e.name: e.reason for e in c.plan.layers if e.decision == "kept"}
    assert "depthwise conv" in reasons["features.2.conv.1.0"]
    assert reasons["features.1.conv.1"].startswith("excluded by --exclude features.1*")
    assert reasons["classifier.1"] == "not matched by --layers"
    assert any(e.decision == "decomposed" for e in c.plan.layers)


def test_fixed_rank_above_mode_size_names_layer():
    with pytest.raises(UsageError, match=r"layer1\.0\.conv1 .*rank 32 is above a mode of size 16"):
        tdexport.compress("resnet20", rank="32", weights="random")


def test_apply_plan_and_replay(tmp_path, resnet20_ratio):
    plan = resnet20_ratio.plan
    rebuilt = apply_plan(tdexport.create_model("resnet20", weights="random"), plan)
    rebuilt.load_state_dict(resnet20_ratio.model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(rebuilt.eval()(x), resnet20_ratio.model.eval()(x))
    # edit one layer's ranks in plan.json and replay it
    d = plan.to_dict()
    target = next(e for e in d["layers"] if e["name"] == "layer3.2.conv2")
    target["ranks"] = [20, 12]
    (tmp_path / "plan.json").write_text(json.dumps(d))
    replayed = tdexport.compress("resnet20", rank=f"plan:{tmp_path / 'plan.json'}", weights="random")
    got = {e.name: e.ranks for e in replayed.plan.layers if e.decision == "decomposed"}
    want = {e["name"]: e["ranks"] for e in d["layers"] if e["decision"] == "decomposed"}
    assert got == want
    target["ranks"] = [99, 12]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(UsageError, match=r"layer 'layer3\.2\.conv2' field 'ranks': \[99, 12\] do not fit"):
        tdexport.compress("resnet20", rank=f"plan:{tmp_path / 'bad.json'}", weights="random")


def test_plan_json_round_trip(resnet20_ratio):
    d = json.loads(json.dumps(resnet20_ratio.plan.to_dict()))
    assert Plan.from_dict(d) == resnet20_ratio.plan
    with pytest.raises(UsageError, match="missing key 'model'"):
        Plan.from_dict({"layers": []})


def test_profile_counts_linear_tokens():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(2), nn.Linear(9, 5))
    sites = profile_layers(model, (3, 5, 5))
    assert [(s.name, s.in_hw, s.tokens) for s in sites] == [("0", (5, 5), 1), ("2", None, 4)]


@pytest.mark.parametrize("format,rank,extra", [
    ("tucker", "vbmf", {}), ("tucker", "energy:0.8", {}), ("svd", "energy:0.5", {"include_classifier": True}),
    ("ht2", "energy:0.7", {"include_stem": True}), ("tt", "energy:0.7", {"tt_type": "general"}),
    ("cp", "vbmf", {}), ("tucker", "svt:0.8", {}), ("reorder", "vbmf", {"coef_ratio": 0.5}),
    ("tucker", "params:2x", {}),
])
def test_plan_only_decides_and_counts_as_the_full_compression(format, rank, extra):
    """A dry run's plan is the run's: same decisions, ranks and counts; the model holds empty meta chains."""
    from tdexport.planner import compress

    torch.manual_seed(0)
    dense = tdexport.create_model("resnet20", weights="random")
    kwargs = dict(format=format, rank=rank, input_shape=(3, 32, 32), **extra)
    full, planned = compress(dense, **kwargs), compress(dense, plan_only=True, **kwargs)
    assert planned.plan.totals == full.plan.totals
    assert any(e.decision == "decomposed" for e in full.plan.layers)
    for a, b in zip(full.plan.layers, planned.plan.layers, strict=True):
        assert (a.name, a.decision, a.method, a.ranks, a.modes, a.reason) == (b.name, b.decision, b.method, b.ranks,
                                                                             b.modes, b.reason)
        assert (a.params_after, a.macs_after, a.storage_ratio) == (b.params_after, b.macs_after, b.storage_ratio)
        assert b.rel_error is None if b.decision == "decomposed" else b.rel_error == a.rel_error
    assert {p.device.type for p in planned.model.parameters()} == {"cpu", "meta"}
