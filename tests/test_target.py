"""Runtime-aware planning: layers that do not pay on the target stay dense, the latency: rule, --round-to auto."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tdexport import planner
from tdexport.budget import BudgetUnreachable
from tdexport.cli import main
from tdexport.compress_and_export import default_target
from tdexport.cost import CostCache, Target
from tdexport.errors import UsageError
from tdexport.plan import Plan


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_a_layer_whose_chain_is_slower_on_the_target_stays_dense(tmp_path):
    # A 16-channel 3×3 conv at Tucker-2 rank (12, 12) keeps 73 % of its MACs in three kernels: on ONNX Runtime
    # CPU the chain is ~1.4–1.6× slower than the dense conv (measured across threads and batch sizes).
    cache = CostCache(tmp_path / "costs.json")
    net = small_net()
    without = planner.compress(net, rank="ratio:0.75", input_shape=(3, 32, 32))
    assert without.plan.layer("2").decision == "decomposed"
    result = planner.compress(net, rank="ratio:0.75", input_shape=(3, 32, 32), target="ort-cpu:1",
                              cost_cache=cache)
    entry = result.plan.layer("2")
    assert entry.decision == "kept" and entry.ranks == [12, 12]
    assert entry.chain_ms >= entry.dense_ms > 0
    assert "factor chain" in entry.reason and "≥ dense" in entry.reason and "ort-cpu b1" in entry.reason
    assert isinstance(result.model[2], nn.Conv2d)
    assert result.plan.options["target"] == {"backend": "ort-cpu", "batch": 1, "precision": "fp32", "threads": None}
    # plan.json keeps the timings and reloads.
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(result.plan.to_dict()))
    again = Plan.read(path)
    assert again.layer("2").dense_ms == entry.dense_ms and again.layer("2").chain_ms == entry.chain_ms
    # A second identical run measures nothing.
    measured = cache.measured
    second = CostCache(tmp_path / "costs.json")
    planner.compress(net, rank="ratio:0.75", input_shape=(3, 32, 32), target=Target("ort-cpu", 1), cost_cache=second)
    assert measured > 0 and second.measured == 0


def test_decomposed_layers_carry_both_timings(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 256, 1), nn.Conv2d(256, 256, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))
    result = planner.compress(net, rank="ratio:0.25", input_shape=(3, 16, 16), target="ort-cpu:1",
                              cost_cache=CostCache(tmp_path / "c.json"))
    for entry in result.plan.layers[1:-1]:
        assert entry.dense_ms > 0 and entry.chain_ms > 0
        # the decision follows the measurement, whichever it is on this machine: a chain must be 5 % faster
        assert (entry.decision == "decomposed") == (entry.chain_ms < 0.95 * entry.dense_ms)


def test_target_options_need_a_target_and_are_checked():
    net = small_net()
    with pytest.raises(UsageError, match="--target"):
        planner.compress(net, rank="latency:2x", input_shape=(3, 32, 32))
    with pytest.raises(UsageError, match="--target"):
        planner.compress(net, rank="ratio:0.5", input_shape=(3, 32, 32), round_to="auto")
    with pytest.raises(UsageError, match="round_to"):
        planner.compress(net, rank="ratio:0.5", input_shape=(3, 32, 32), round_to=0)
    with pytest.raises(UsageError, match="BACKEND"):
        planner.compress(net, rank="ratio:0.5", input_shape=(3, 32, 32), target="cpu")


@pytest.mark.parametrize("args", [["--target", "gpu:1"], ["--target", "ort-cpu:0"], ["--round-to", "abc"],
                                  ["--round-to", "0"], ["--rank", "latency:abc"], ["--rank", "latency:2x"],
                                  ["--round-to", "auto"]])
def test_cli_bad_target_options_exit_2(args, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compress", "resnet20", "--weights", "random", "--out", str(tmp_path / "o"), *args])
    assert exc.value.code == 2, capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_compress_and_export_defaults_its_target():
    assert default_target(["ort-cpu", "torch"], None) == Target("ort-cpu", 32)
    assert default_target(["ort-cpu"], [1, 8]) == Target("ort-cpu", 8)
    assert default_target(["torch", "ort-cpu"], [1]) is None
    assert default_target(None, None) == Target("ort-cpu", 32)


def resnet20_on_target(rank: str, tmp_path, cache: CostCache | None = None):
    """Compress a random-weight ResNet-20 with ``rank`` on ort-cpu:1: (plan, None) or (None, BudgetUnreachable)."""
    from tdexport.zoo import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", weights="random", num_classes=10)
    try:
        result = planner.compress(model, rank=rank, input_shape=(3, 32, 32), target="ort-cpu:1",
                                  cost_cache=cache if cache is not None else CostCache(tmp_path / "c.json"))
    except BudgetUnreachable as err:
        return None, err
    return result.plan, None


@pytest.mark.slow
def test_latency_rule_end_to_end_on_resnet20(tmp_path):
    first = CostCache(tmp_path / "c.json")
    plan, err = resnet20_on_target("latency:1.3x", tmp_path, first)
    # A second run finds every layer and whole-model timing in the cache and reaches the same verdict.
    second = CostCache(tmp_path / "c.json")
    again, err_again = resnet20_on_target("latency:1.3x", tmp_path, second)
    assert first.measured > 0 and second.measured == 0 and second.hits > 0
    if err is not None:
        # A machine on which no allocation reaches 1.3× must say so with the best measured figure.
        assert 0 < err.best < 1.3 * 0.9 and "best" in str(err)
        assert err_again is not None and err_again.best == err.best
        return
    assert again.budget["measured"] == plan.budget["measured"] and again.budget["steps"] == plan.budget["steps"]
    assert [e.ranks for e in again.layers] == [e.ranks for e in plan.layers]
    budget = plan.budget
    assert budget["rule"] == "latency:1.3x" and budget["metric"] == "latency" and budget["target"] == 1.3
    assert budget["predicted"] > 1 and budget["measured"] > 0 and budget["achieved"] == budget["measured"]
    assert abs(budget["measured"] / 1.3 - 1) <= 0.10 or budget["measured"] > 1.3  # accepted only within ±10 %
    assert 1 <= len(budget["steps"]) <= 7
    assert all(s["measured"] > 0 and s["predicted"] > 0 for s in budget["steps"])
    decomposed = [e for e in plan.layers if e.decision == "decomposed"]
    assert decomposed and all(e.chain_ms < e.dense_ms for e in decomposed)
    json.dumps(plan.to_dict())


@pytest.mark.slow
def test_macs_budget_on_a_target_spends_it_only_on_layers_that_pay(tmp_path):
    plan, err = resnet20_on_target("macs:2x", tmp_path)
    if err is not None:
        # Possible on a runtime where too few layers pay: the message gives the best reduction.
        assert 0 < err.best < 2
        return
    decomposed = [e for e in plan.layers if e.decision == "decomposed"]
    assert decomposed and all(e.chain_ms < e.dense_ms for e in decomposed)
    assert 2.0 <= plan.budget["achieved"] <= 2.0 * 1.03 or any("factor chain" in e.reason for e in plan.layers)
