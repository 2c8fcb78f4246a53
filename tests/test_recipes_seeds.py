"""The shipped recipes: each one dry-runs, the seeds' fixed rank tables give their published counts, the dense
baseline (format none) plans the model itself, and the embedded digits recipes run end to end and meet their
own gates."""

from pathlib import Path

import pytest
import torch
import yaml
from counting import count_macs
from test_recipes import TINY, write
from threads import one_thread

from tdexport.budget import BudgetUnreachable
from tdexport.errors import UsageError
from tdexport.recipes import dry_run, list_recipes, load_recipe, run_recipe
from tdexport.recipes.planning import build_model, compress_recipe

PROJECT = Path(__file__).resolve().parents[1] / "recipes"
RUNNABLE = sorted(r.name for r in list_recipes(PROJECT) if r.runnable) if PROJECT.is_dir() else []
EMBEDDED = [n for n in RUNNABLE if n.startswith("embedded-")]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Plans run with one torch thread (see `threads.one_thread`)."""
    with one_thread():
        yield


def recipe_with(tmp_path, compression, **sections):
    """TINY (ResNet-20 on digits) with its compression (and any other top-level section) replaced."""
    data = yaml.safe_load(TINY)
    data["compression"] = compression
    data.update(sections)
    return load_recipe(write(tmp_path, "r", yaml.safe_dump(data, sort_keys=False)))


def within(ours, published, tolerance=0.05):
    return abs(ours / published - 1) <= tolerance


# ---------------------------------------------------------------------------------------------- the dense baseline


def test_format_none_plans_the_dense_model(tmp_path):
    r = recipe_with(tmp_path, {"format": "none"})
    assert r.method() == "none (dense baseline)"
    summary = dry_run(r)
    plan = summary["plan"]
    assert summary["decomposed"] == 0 and summary["layers"] == len(plan.layers) == 20
    assert plan.rank_rule == "none (dense baseline)"
    assert all(e.decision == "kept" and "format none" in e.reason for e in plan.layers)
    totals = plan.totals
    assert totals["params_before"] == totals["params_after"] == sum(p.numel() for p in build_model(r, 10,
                                                                    fallback=False)[0].parameters())
    assert totals["macs_before"] == totals["macs_after"]
    ours = summary["ours"]
    assert ours["params_ratio"] == ours["macs_ratio"] == 1.0
    assert ours["factored_params_ratio"] is None and ours["factored_macs_ratio"] is None


@pytest.mark.parametrize("compression, extra, key", [
    ({"format": "none", "rank": "ratio:0.5"}, {}, "compression.rank"),
    ({"format": "none", "ranks": {"layer1.0.conv1": [4, 4]}}, {}, "compression.ranks"),
    ({"format": "none"}, {"admm": {"epochs": 1}}, "admm"),
])
def test_format_none_refuses_ranks_and_admm(tmp_path, compression, extra, key):
    with pytest.raises(UsageError) as err:
        recipe_with(tmp_path, compression, **extra)
    assert f"{key}: format none" in str(err.value) and "r.yaml" in str(err.value)


# ---------------------------------------------------------------------------------------------- counts papers print


def test_counts_beside_the_ratios_match_the_compressed_model(tmp_path):
    """Factored-layer ratios and absolute counts, checked against the modules the plan builds."""
    r = recipe_with(tmp_path, {"format": "reorder", "groups": 4, "coef_ratio": 0.25})
    summary = dry_run(r)
    model = compress_recipe(r, build_model(r, 10, fallback=False)[0]).model
    coefficients = sum(m.coefficients.numel() for m in model.modules() if hasattr(m, "coefficients"))
    index = sum(m.permutation.numel() for m in model.modules() if hasattr(m, "permutation"))
    params = sum(p.numel() for p in model.parameters())
    ours = summary["ours"]
    assert ours["trainable_millions"] * 1e6 == pytest.approx(coefficients, abs=0.5)
    assert ours["params_millions"] * 1e6 == pytest.approx(params + index, abs=0.5)
    assert coefficients < params < params + index

    r = recipe_with(tmp_path, {"format": "tucker", "rank": "ratio:0.5"})
    summary = dry_run(r)
    done = [e for e in summary["plan"].layers if e.decision == "decomposed"]
    assert 0 < len(done) < summary["layers"]
    ours = summary["ours"]
    assert ours["factored_params_ratio"] == sum(e.params_before for e in done) / sum(e.params_after for e in done)
    assert ours["factored_macs_ratio"] == sum(e.macs_before for e in done) / sum(e.macs_after for e in done)
    assert ours["factored_params_ratio"] > ours["params_ratio"] and ours["trainable_millions"] is None
    assert ours["params_millions"] * 1e6 == summary["plan"].totals["params_after"]


# ---------------------------------------------------------------------------------------------- every shipped recipe


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNNABLE)
def test_every_shipped_recipe_dry_runs(name):
    r = load_recipe(name, root=PROJECT)
    target = r.data["compression"]["target"]
    if target and not target.startswith("ort-cpu"):
        pytest.skip(f"{r.name} plans on {target}, not measurable on this CPU machine")
    try:
        summary = dry_run(r)
    except BudgetUnreachable as err:
        # A latency: target no allocation reaches on this CPU is refused with the best measured speedup.
        assert r.data["compression"]["rank"].startswith("latency:") and 0 < err.best and "best" in str(err)
        return
    plan = summary["plan"]
    assert plan.model == r.data["model"]["name"] and summary["layers"] == len(plan.layers)
    ours = summary["ours"]
    if r.data["compression"]["format"] == "none":
        assert summary["decomposed"] == 0 and ours["params_ratio"] == ours["macs_ratio"] == 1.0
        return
    # A weight-dependent rule on random stand-in weights (offline) may find nothing worth factoring, as
    # svt:0.98 does on random VGG-19 (flat spectra); a rule that depends on shapes only always factors.
    weight_rule = any(k in str(r.data["compression"]["rank"]) for k in ("vbmf", "energy", "svt"))
    if summary["weights_note"] is None or not weight_rule:
        assert summary["decomposed"] >= 1
    assert ours["params_ratio"] >= 1 and ours["macs_ratio"] >= 1
    if summary["decomposed"]:
        assert ours["params_ratio"] > 1 or ours["storage_ratio"] > 1


# ------------------------------------------------------------------------- seeds' rank tables vs their published counts


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tdc-resnet18-imagenet-tucker-admm", "tdc-resnet50-imagenet-tucker-distill"])
def test_tdc_rank_tables_give_the_published_parameter_reduction(name):
    """TDC's tables (README: params 3x) give 3x within 5 %; the MACs are counted from the tensors the model runs.

    TDC's FLOP ratios (2.65x, 2.7x) are not reachable from the same tables: over the whole model ours are 2.22x
    and 1.94x, over the factored layers alone 2.46x and 3.54x (recipes' notes); the count is checked here.
    """
    r = load_recipe(name, root=PROJECT)
    model, _, _ = build_model(r, None, fallback=True)
    result = compress_recipe(r, model)
    totals, published = result.plan.totals, r.data["published"]
    assert within(totals["params_before"] / totals["params_after"], published["params_ratio"])
    assert totals["params_after"] == sum(p.numel() for p in result.model.parameters())
    x = torch.zeros(1, 3, 224, 224)
    assert count_macs(result.model, x) == totals["macs_after"] and count_macs(model, x) == totals["macs_before"]
    assert set(r.data["compression"]["ranks"]) >= {e.name for e in result.plan.layers if e.decision == "decomposed"}


@pytest.mark.slow
def test_reorder_resnet50_g4_r1_gives_the_published_counts():
    """README: 8.2M parameters in total (permutation index included), 1.7M trainable DCT coefficients."""
    r = load_recipe("reordering-resnet50-imagenet-g4-r1", root=PROJECT)
    ours, published = dry_run(r)["ours"], r.data["published"]
    assert (published["params_millions"], published["trainable_millions"]) == (8.2, 1.7)
    assert within(ours["params_millions"], 8.2) and within(ours["trainable_millions"], 1.7)


# ---------------------------------------------------------------------------------------------- the digits recipes


@pytest.mark.slow
@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_recipe_runs_end_to_end_and_meets_its_gates(tmp_path, name):
    r = load_recipe(name, root=PROJECT)
    gates = r.data["validate"]
    assert gates["max_parity_err"] is not None and gates["max_acc_drop"] is not None  # gates to meet
    # Short timing: the gates here are accuracy and parity; latency is measured and reported, not gated.
    try:
        report = run_recipe(r, out=tmp_path / name, progress=False, iterations=5, duration=0.2, warmup=0.1)
    except BudgetUnreachable as err:
        # latency:1.2x on a CPU where no allocation reaches it: refused with the best measured speedup.
        assert name.endswith("-latency") and 0 < err.best < 1.2 and "best" in str(err)
        return
    assert report["gates_passed"] is True
    assert set(report["gates"]) >= {"max_parity_err", "max_acc_drop"}
    assert all(g["passed"] for g in report["gates"].values())
    assert {"plan.json", "compressed.safetensors", "original.onnx", "compressed.onnx", "report.json",
            "report.md", "recipe.json"} <= {p.name for p in (tmp_path / name).iterdir()}
    assert report["published"]["metrics"]["top1"]["ours"] is not None
