"""Budget rank rules: parsing, the allocator on hand-written tables, option costs, and whole-model budgets."""

import itertools
import json
import math
import random

import pytest
import torch
from torch import nn

import tdexport
from tdexport import layers as L
from tdexport.budget import BudgetUnreachable, Option, allocate, lower_hull
from tdexport.budget_plan import chain_params_macs, layer_options, metric_cost, rank_grid
from tdexport.cli import main
from tdexport.errors import UsageError
from tdexport.plan import Plan
from tdexport.planner import LayerSite, _Spectra
from tdexport.ranks import mode_rank, parse_rank_rule

# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text,kind,value", [
    ("params:3x", "params", 3.0), ("macs:3x", "macs", 3.0), ("MACS:2.5X", "macs", 2.5),
    ("params:0.33", "params", 1 / 0.33), ("macs:0.5", "macs", 2.0), ("latency:2x", "latency", 2.0),
    ("latency:1.5x", "latency", 1.5),
])
def test_parse_budget_rules(text, kind, value):
    rule = parse_rank_rule(text)
    assert (rule.kind, rule.text, rule.is_budget) == (kind, text, True)
    assert rule.value == pytest.approx(value, rel=1e-12)


def test_other_rules_are_not_budgets_and_budgets_have_no_mode_rank():
    assert not any(parse_rank_rule(t).is_budget for t in ("vbmf", "energy:0.9", "ratio:0.5", "8", "plan:p.json"))
    with pytest.raises(ValueError, match="no per-mode rank"):
        mode_rank(parse_rank_rule("macs:3x"), 64)


MALFORMED = ["macs:0x", "latency:abc", "params:", "macs:1x", "params:1.5", "latency:0.5", "params:1", "macs:x",
             "macs:-2x", "params:0", "macs:infx", "params:nan", "latency:", "latency:1x"]


@pytest.mark.parametrize("text", MALFORMED)
def test_parse_rejects_malformed_budget_rules_naming_accepted_forms(text):
    with pytest.raises(UsageError, match="accepted forms: vbmf") as info:
        parse_rank_rule(text)
    assert "params:Kx / macs:Kx" in str(info.value) and "latency:Kx" in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text", ["macs:0x", "latency:abc", "params:"])
def test_cli_exits_2_on_malformed_budget_rules(tmp_path, capsys, text):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["compress", "resnet18", "--rank", text, "--weights", "random", "--out", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "accepted forms" in err and "params:Kx / macs:Kx" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- allocator


def _brute(layers, budget, fixed=0.0):
    """Least Σ error over every combination within the budget (None when none fits)."""
    best = None
    for combo in itertools.product(*layers.values()):
        if fixed + sum(o.cost for o in combo) <= budget:
            err = sum(o.error for o in combo)
            best = err if best is None else min(best, err)
    return best


TABLE = {
    "a": [Option(100, 0.0), Option(60, 0.1, (6,)), Option(30, 0.5, (3,))],
    "b": [Option(100, 0.0), Option(50, 0.2, (5,)), Option(20, 0.9, (2,))],
    "c": [Option(40, 0.0), Option(45, 0.3, (1,)), Option(40, 0.05, (2,))],  # never pays: no option is cheaper
}


def test_allocator_meets_an_exact_budget():
    # 10 fixed + a at 60 + b at 50 + c dense 40 = 160 exactly; any other choice within 160 has more error
    got = allocate(TABLE, 160, fixed_cost=10)
    assert {n: o.ranks for n, o in got.choices.items()} == {"a": (6,), "b": (5,), "c": None}
    assert got.cost == 160 and got.error == pytest.approx(0.3)
    assert got.reference == 250 and got.reduction == pytest.approx(250 / 160)
    assert got.error == pytest.approx(_brute(TABLE, 160, 10))
    assert list(got.choices) == ["a", "b", "c"]


def test_a_layer_whose_options_never_pay_stays_dense():
    for budget in range(100, 260, 5):
        try:
            got = allocate(TABLE, budget, fixed_cost=10)
        except BudgetUnreachable:
            continue
        assert got.choices["c"].ranks is None, budget
        assert got.cost <= budget
    # an option that saves little for a large error also stays dense while the others can pay the budget
    table = {"a": TABLE["a"], "d": [Option(100, 0.0), Option(95, 0.9, (1,))]}
    got = allocate(table, 160)
    assert got.choices["d"].ranks is None and got.choices["a"].ranks == (6,)


def test_unreachable_budget_raises_with_the_best_figure():
    with pytest.raises(BudgetUnreachable) as info:
        allocate(TABLE, 99, fixed_cost=10)  # cheapest: 10 + 30 + 20 + 40 = 100
    err = info.value
    assert isinstance(err, UsageError) and err.exit_code == 2
    assert err.best == pytest.approx(250 / 100)
    assert "2.500×" in str(err)


def test_allocator_rejects_bad_tables():
    with pytest.raises(ValueError, match="no option"):
        allocate({"a": []}, 10)
    with pytest.raises(ValueError, match="finite"):
        allocate({"a": [Option(math.nan, 0.0)]}, 10)
    with pytest.raises(ValueError, match="budget"):
        allocate({"a": [Option(1, 0.0)]}, -1)


def test_lower_hull_is_convex_and_decreasing():
    opts = [Option(c, e, (i,)) for i, (c, e) in enumerate([(10, 0), (8, 0.1), (6, 0.15), (4, 0.5), (2, 0.6),
                                                            (1, 2.0), (7, 0.5), (5, 0.2)])]
    hull = lower_hull(opts)
    assert [(o.cost, o.error) for o in hull] == [(1, 2.0), (2, 0.6), (5, 0.2), (6, 0.15), (10, 0)]


def _random_table(rng, n_layers):
    table = {}
    for name in "abcd"[:n_layers]:
        dense = rng.randint(50, 100)
        table[name] = [Option(dense, 0.0)] + [Option(rng.randint(1, dense), round(rng.random(), 3), (j,))
                                              for j in range(rng.randint(1, 4))]
    return table


def test_allocator_is_optimal_at_lagrangian_budgets_and_never_infeasible():
    """On tiny random tables against brute force: always within budget and never better than the optimum (a
    sanity check of feasibility); exactly optimal at every budget a Lagrange multiplier λ produces (each layer
    at argmin error + λ·cost), the points the greedy path is guaranteed to pass."""
    rng = random.Random(0)
    checked = 0
    for _ in range(60):
        table = _random_table(rng, rng.randint(2, 4))
        for budget in range(0, 401, 11):
            best = _brute(table, budget)
            if best is None:
                with pytest.raises(BudgetUnreachable):
                    allocate(table, budget)
                continue
            got = allocate(table, budget)
            assert got.cost <= budget and got.error >= best - 1e-12
        for lam in (0.0, 0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 1.0):
            picks = [min(opts, key=lambda o: (o.error + lam * o.cost, o.cost)) for opts in table.values()]
            budget = sum(o.cost for o in picks)
            got = allocate(table, budget)
            assert got.error == pytest.approx(_brute(table, budget), abs=1e-12)
            checked += 1
    assert checked == 480


def test_allocator_is_deterministic_and_breaks_ties_by_name():
    twin = [Option(100, 0.0), Option(50, 0.5, (5,))]
    forward = allocate({"x": twin, "y": twin}, 150)
    backward = allocate({"y": twin, "x": twin}, 150)
    assert forward.choices == backward.choices
    assert forward.choices["x"].ranks == (5,) and forward.choices["y"].ranks is None
    rng = random.Random(1)
    table = _random_table(rng, 4)
    assert allocate(table, 200) == allocate(dict(reversed(list(table.items()))), 200)


def test_fill_up_spends_the_slack_left_by_the_last_greedy_step():
    # the hull step of 'a' from 100 to 10 overshoots a budget of 150; fill-up moves 'a' back to 50 (off hull)
    table = {"a": [Option(100, 0.0), Option(50, 0.6, (5,)), Option(10, 0.7, (1,))],
             "b": [Option(100, 0.0), Option(60, 5.0, (6,))]}
    got = allocate(table, 150)
    assert got.choices["a"].ranks == (5,) and got.cost == 150


# ------------------------------------------------------------------------------------------------ options


def _site(module, in_hw, calls=1, tokens=1):
    return LayerSite("m", module, in_hw, tokens, calls, ("m",), [(in_hw, tokens)] * calls)


@pytest.mark.parametrize("module,method,ranks,in_hw", [
    (nn.Conv2d(32, 48, 3, padding=1), "tucker2", (12, 8), (15, 17)),
    (nn.Conv2d(32, 48, 3, stride=2, padding=2, dilation=2, bias=False), "tt", (48, 5), (16, 16)),
    (nn.Conv2d(16, 24, (3, 5), padding="same"), "tucker2", (3, 16), (9, 9)),
    (nn.Conv2d(64, 32, 1, stride=2), "svd", (7,), (14, 14)),
    (nn.Linear(40, 30), "svd", (9,), None),
])
def test_analytic_cost_equals_the_built_chain(module, method, ranks, in_hw):
    for calls, tokens in ((1, 1), (3, 1 if in_hw else 5)):
        site = _site(module, in_hw, calls, tokens)
        chain = L.structure_for(method, module, ranks)
        params = L.chain_cost(chain, in_hw=in_hw, tokens=tokens)[0]
        macs = calls * L.chain_cost(chain, in_hw=in_hw, tokens=tokens)[1]
        assert chain_params_macs(site, method, ranks) == (params, macs)
        dense = L.chain_cost([module], in_hw=in_hw, tokens=tokens)
        assert chain_params_macs(site, method, None) == (dense[0], calls * dense[1])


def test_rank_grid():
    assert rank_grid(64) == list(range(2, 65, 2))
    assert rank_grid(10) == list(range(1, 11))
    assert rank_grid(100, 16) == [16, 32, 48, 64, 80, 96, 100]
    assert rank_grid(8, 16) == [8]


def test_layer_options_cut_both_costs_and_svd_error_is_exact():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 48, 1)
    site = _site(conv, (8, 8))
    options = layer_options(site, "svd", _Spectra(conv.weight.detach()), cost=metric_cost("macs"))
    dense = chain_params_macs(site, "svd", None)
    assert options[0] == Option(float(dense[1]), 0.0, None)
    s2 = torch.linalg.svdvals(conv.weight.detach().reshape(48, 64).double()) ** 2
    for o in options[1:]:
        params, macs = chain_params_macs(site, "svd", o.ranks)
        assert params < dense[0] and macs < dense[1] and o.cost == macs
        e = float(s2[o.ranks[0]:].sum() / s2.sum())
        assert o.error == pytest.approx(-math.log(1 - e), rel=1e-9)
    assert max(o.ranks[0] for o in options[1:]) < 64 * 48 / (64 + 48)
    tucker = nn.Conv2d(32, 32, 3, padding=1)
    t_opts = layer_options(_site(tucker, (8, 8)), "tucker2", _Spectra(tucker.weight.detach()),
                           cost=metric_cost("params"))
    assert all(len(o.ranks) == 2 for o in t_opts[1:]) and all(o.error > 0 for o in t_opts[1:])


# --------------------------------------------------------------------------------------- whole-model budgets


def _measured(model, input_shape):
    """Params and conv/linear MACs counted by forward hooks on the built module (independent of the plan)."""
    macs = []

    def hook(m, inp, out):
        macs.append(out[0].numel() * (m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_features))

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for h in hs:
        h.remove()
    return sum(p.numel() for p in model.parameters()), sum(macs)


def _check_budget(dense, c, rule, input_shape):
    budget = c.plan.budget
    metric = budget["metric"]
    target = parse_rank_rule(rule).value
    assert budget["rule"] == rule and budget["target"] == target
    assert target <= budget["achieved"] <= 1.03 * target
    assert budget["predicted"] == pytest.approx(budget["achieved"], rel=1e-12)
    before, after = _measured(dense, input_shape), _measured(c.model, input_shape)
    index = 0 if metric == "params" else 1
    assert before[index] / after[index] == pytest.approx(budget["achieved"], rel=1e-12)
    decomposed = [e for e in c.plan.layers if e.decision == "decomposed"]
    assert decomposed and all(e.reason == f"budget {rule}" for e in decomposed)


@pytest.mark.parametrize("rule,fmt", [("macs:3x", "tucker"), ("params:3x", "tucker"), ("macs:2x", "tt"),
                                      ("params:0.4", "tucker")])
def test_budget_on_resnet20(rule, fmt):
    torch.manual_seed(0)
    dense = tdexport.create_model("resnet20", weights="random")
    c = tdexport.compress(dense, format=fmt, rank=rule, model_name="resnet20", input_shape=(3, 32, 32), iters=0)
    _check_budget(dense, c, rule, (3, 32, 32))


def test_budget_plan_round_trips_and_replays(tmp_path):
    torch.manual_seed(0)
    dense = tdexport.create_model("resnet20", weights="random")
    c = tdexport.compress(dense, rank="macs:3x", model_name="resnet20", input_shape=(3, 32, 32), round_to=4,
                          num_classes=10)
    assert all(r % 4 == 0 or r in e.shape[:2] for e in c.plan.layers if e.decision == "decomposed"
               for r in e.ranks)
    kept = [e for e in c.plan.layers if e.decision == "kept" and e.reason.startswith("budget")]
    assert all("macs:3x" in e.reason for e in kept)
    tdexport.save(tmp_path / "r20", c)
    data = json.loads((tmp_path / "r20" / "plan.json").read_text())
    assert data["budget"] == c.plan.budget and data["rank_rule"] == "macs:3x"
    assert Plan.from_dict(data) == c.plan
    replayed = tdexport.compress(dense, rank=f"plan:{tmp_path / 'r20' / 'plan.json'}", model_name="resnet20",
                                 input_shape=(3, 32, 32), num_classes=10)
    assert [(e.name, e.decision, e.ranks) for e in replayed.plan.layers if e.decision == "decomposed"] == \
        [(e.name, e.decision, e.ranks) for e in c.plan.layers if e.decision == "decomposed"]
    assert replayed.plan.totals == c.plan.totals and replayed.plan.budget is None
    assert "budget" not in replayed.plan.to_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tdexport.load(tmp_path / "r20")(x), c.model.eval()(x))
    for bad in ({"rule": "macs:3x"}, {"rule": "macs:3x", "metric": "flops", "target": 3.0},
                {"rule": "macs:3x", "metric": "macs", "target": -1}, {**c.plan.budget, "achieved": "3"}, [1]):
        with pytest.raises(UsageError, match="budget"):
            Plan.from_dict({**data, "budget": bad})


def test_unreachable_latency_and_cp_budgets_exit_2(tmp_path, capsys):
    with pytest.raises(BudgetUnreachable, match=r"at most \d+\.\d\d× fewer MACs .* costliest layer kept dense is") \
            as info:
        tdexport.compress("resnet20", rank="macs:100x", weights="random")
    assert 10 < info.value.best < 100
    with pytest.raises(UsageError, match="needs --target"):
        tdexport.compress("resnet20", rank="latency:2x", weights="random")
    with pytest.raises(UsageError, match="support the tucker, tt .special. and svd formats, not cp"):
        tdexport.compress("resnet20", format="cp", rank="params:2x", weights="random")
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "resnet20", "--rank", "macs:100x", "--weights", "random", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "cannot be met: at most" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name,rule", [
    ("resnet18", "macs:3x"), ("resnet18", "params:3x"), ("resnet18", "params:0.33"),
    ("resnet50", "macs:3x"), ("resnet50", "params:3x"),
    ("mobilenet_v2", "macs:3x"), ("mobilenet_v2", "params:3x"),
])
def test_budget_on_imagenet_models(name, rule):
    """Random-init torchvision models at 224×224: the achieved whole-model reduction lies in [K, 1.03·K].

    mobilenet_v2's classifier holds 37 % of its parameters, so params:3x needs it factored
    (without, the best is 2.40× and the rule exits 2 saying so).
    """
    torch.manual_seed(0)
    dense = tdexport.create_model(name, weights="random")
    include_classifier = name == "mobilenet_v2" and rule.startswith("params")
    c = tdexport.compress(dense, rank=rule, model_name=name, input_shape=(3, 224, 224), iters=0,
                          include_classifier=include_classifier)
    _check_budget(dense, c, rule, (3, 224, 224))
