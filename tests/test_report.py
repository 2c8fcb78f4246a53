"""Gates, report.json / report.md / plots, the MAC-vs-speedup warning, and atomic report writing."""

import json
from datetime import datetime, timezone

import pytest
import torch
from torch import nn

import tdexport
from tdexport.errors import GateFailed, UsageError
from tdexport.plan import LayerPlan, Plan
from tdexport.validate import report as R
from tdexport.validate.accuracy import Accuracy
from tdexport.validate.gates import Gate, evaluate_gates, failed_gates, raise_if_failed
from tdexport.validate.latency import PairedLatency, latency_stats

PNG = b"\x89PNG\r\n\x1a\n"
NO_GATES = {"max_acc_drop": None, "min_speedup": None, "max_parity_err": None}
NO_VALUES = {"acc_drop": None, "speedup": None, "parity_err": None}


# ------------------------------------------------------------------------------------------------ gates


def test_only_requested_gates_appear_and_pass_or_fail():
    gates = evaluate_gates(**{**NO_GATES, "min_speedup": 1.5}, **{**NO_VALUES, "speedup": 2.0, "acc_drop": 9.0})
    assert list(gates) == ["min_speedup"]
    assert gates["min_speedup"] == Gate("min_speedup", 1.5, 2.0, True)
    assert evaluate_gates(**NO_GATES, **NO_VALUES) == {}

    gates = evaluate_gates(max_acc_drop=1.0, min_speedup=1.5, max_parity_err=1e-3,
                           acc_drop=1.0, speedup=0.93, parity_err=2e-3)
    assert list(gates) == ["max_acc_drop", "min_speedup", "max_parity_err"]
    assert gates["max_acc_drop"].passed  # the limit itself is allowed
    assert not gates["min_speedup"].passed
    assert not gates["max_parity_err"].passed
    assert failed_gates(gates) == ["min_speedup", "max_parity_err"]
    assert gates["min_speedup"].to_dict() == {"limit": 1.5, "value": 0.93, "passed": False}


def test_requested_gate_without_a_value_fails_with_none():
    gates = evaluate_gates(**{**NO_GATES, "max_acc_drop": 1.0}, **NO_VALUES)
    assert gates["max_acc_drop"] == Gate("max_acc_drop", 1.0, None, False)
    nan = evaluate_gates(**{**NO_GATES, "min_speedup": 1.0}, **{**NO_VALUES, "speedup": float("nan")})
    assert nan["min_speedup"].value is None and not nan["min_speedup"].passed
    with pytest.raises(GateFailed, match=r"max_acc_drop \(value unavailable, limit 1\)"):
        raise_if_failed(gates)


def test_gate_failed_message_names_each_failing_gate():
    gates = evaluate_gates(max_acc_drop=1.0, min_speedup=1.5, max_parity_err=0.01,
                           acc_drop=0.2, speedup=0.93, parity_err=0.05)
    with pytest.raises(GateFailed) as info:
        raise_if_failed(gates)
    msg = str(info.value)
    assert msg == "gate failed: min_speedup (value 0.93 < limit 1.5); max_parity_err (value 0.05 > limit 0.01)"
    assert info.value.exit_code == 3
    raise_if_failed(evaluate_gates(**{**NO_GATES, "min_speedup": 1.0}, **{**NO_VALUES, "speedup": 1.2}))
    with pytest.raises(UsageError):
        evaluate_gates(**{**NO_GATES, "min_speedup": float("inf")}, **NO_VALUES)


# ------------------------------------------------------------------------------------------------ report


def tiny_plan():
    layers = [
        LayerPlan("conv1", "Conv2d", [64, 3, 3, 3], None, [], "kept", "stem (first conv)", 1792, 1792,
                  1_769_472, 1_769_472, None, [32, 32], 1),
        LayerPlan("block.conv", "Conv2d", [64, 64, 3, 3], "tucker2", [16, 16], "decomposed", "rank rule ratio:0.25",
                  36_928, 4_416, 37_748_736, 4_456_448, 0.41, [32, 32], 1),
        LayerPlan("block.proj", "Conv2d", [128, 64, 1, 1], "svd", [32], "decomposed", "rank rule ratio:0.25",
                  8_320, 6_272, 8_388_608, 6_291_456, 0.22, [32, 32], 1),
        LayerPlan("fc", "Linear", [10, 128], None, [], "kept", "classifier (last layer)", 1290, 1290, 1280, 1280,
                  None, None, 1),
    ]
    totals = {"params_before": 48_330, "params_after": 13_770, "macs_before": 47_908_096, "macs_after": 11_977_024}
    return Plan("tiny", "tucker2", "ratio:0.25", [3, 32, 32], layers, totals, 10)


class ParityLike:
    def to_dict(self):
        return {"max_abs_err": 0.0123, "rel_l2_err": 0.0045, "cosine": 0.99998, "top1_agreement": 0.995,
                "samples": 256}


def paired(batch, original_ms, speedup):
    orig = [original_ms * f for f in (0.98, 1.0, 1.01, 1.03, 0.99)]
    return PairedLatency(batch, latency_stats(orig, batch), latency_stats([t / speedup for t in orig], batch),
                         speedup, (speedup * 0.95, speedup * 1.05), 12)


def make_report(speedups=(3.0, 3.2), **overrides):
    accuracy = {"ort-cpu": {"original": Accuracy(93.5, 99.1, 1000), "compressed": Accuracy(92.25, 98.8, 1000),
                            "dataset": "digits"}}
    latency = {"ort-cpu": {32: paired(32, 80.0, speedups[1]), 1: paired(1, 4.0, speedups[0])}}
    gates = evaluate_gates(max_acc_drop=2.0, min_speedup=1.5, max_parity_err=None,
                           acc_drop=93.5 - 92.25, speedup=speedups[1], parity_err=0.0045)
    kwargs = {"plan": tiny_plan(), "model": {"weights": "random"}, "accuracy": accuracy, "parity": ParityLike(),
              "latency": latency, "gates": gates, "environment": {"threads": {"torch_threads": 2}},
              "created": datetime(2026, 11, 26, 9, 30, tzinfo=timezone.utc)}
    kwargs.update(overrides)
    return R.build_report(**kwargs)


def test_write_report_json_has_every_key_with_its_type(tmp_path):
    paths = R.write_report(make_report(), tmp_path / "run", plan=tiny_plan())
    assert set(paths) == {"json", "markdown", "plot_layers", "plot_latency"}
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "plot_layers.png", "plot_latency.png"}
    data = json.loads(paths["json"].read_text())

    assert data["schema_version"] == 1
    assert datetime.fromisoformat(data["created"]) == datetime(2026, 11, 26, 9, 30, tzinfo=timezone.utc)
    env = data["environment"]
    for key in ("python", "torch", "onnx", "onnxruntime", "tensorrt", "cpu_count", "threads", "device",
                "providers"):
        assert key in env
    assert torch.__version__.startswith(env["torch"].split("+")[0])
    assert env["tensorrt"] is None or isinstance(env["tensorrt"], str)
    assert env["threads"] == {"torch_threads": 2} and isinstance(env["providers"], list)
    assert data["model"] == {"name": "tiny", "format": "tucker2", "rank_rule": "ratio:0.25",
                             "input_shape": [3, 32, 32], "num_classes": 10, "weights": "random"}

    assert data["params"] == {"original": 48_330, "compressed": 13_770, "ratio": pytest.approx(48_330 / 13_770)}
    assert data["macs"]["ratio"] == pytest.approx(4.0) == data["mac_reduction"]

    acc = data["accuracy"]["ort-cpu"]
    assert acc["original"] == {"top1": 93.5, "top5": 99.1} and acc["compressed"] == {"top1": 92.25, "top5": 98.8}
    assert (acc["dataset"], acc["samples"], acc["top1_drop"]) == ("digits", 1000, 1.25)
    assert data["accuracy_note"] is None

    assert {"max_abs_err", "rel_l2_err", "cosine", "top1_agreement"} <= set(data["parity"])
    assert data["parity"]["rel_l2_err"] == 0.0045

    lat = data["latency"]["ort-cpu"]
    assert list(lat) == ["1", "32"]
    for block in lat.values():
        assert set(block) == {"original", "compressed", "speedup", "speedup_spread", "rounds"}
        for which in ("original", "compressed"):
            stats = block[which]
            for key in ("count", "mean", "stdev", "p50", "p90", "p95", "p99", "throughput"):
                assert isinstance(stats[key], (int, float))
            assert stats["count"] == 5
        assert isinstance(block["speedup_spread"], list) and len(block["speedup_spread"]) == 2
    assert lat["32"]["original"]["throughput"] == pytest.approx(32 * 1000 / lat["32"]["original"]["mean"])
    assert data["headline"] == {"backend": "ort-cpu", "batch": 32, "speedup": 3.2, "acc_drop": 1.25,
                                "parity_err": 0.0045}

    assert isinstance(data["warnings"], list)
    assert data["gates"] == {"max_acc_drop": {"limit": 2.0, "value": 1.25, "passed": True},
                             "min_speedup": {"limit": 1.5, "value": 3.2, "passed": True}}
    assert data["gates_passed"] is True

    assert [row["name"] for row in data["layers"]] == ["conv1", "block.conv", "block.proj", "fc"]
    conv = data["layers"][1]
    assert conv == {"name": "block.conv", "type": "Conv2d", "shape": [64, 64, 3, 3], "decision": "decomposed",
                    "method": "tucker2", "ranks": [16, 16], "params_before": 36_928, "params_after": 4_416,
                    "macs_before": 37_748_736, "macs_after": 4_456_448, "rel_error": 0.41,
                    "reason": "rank rule ratio:0.25"}

    for key in ("plot_layers", "plot_latency"):
        assert paths[key].read_bytes()[:8] == PNG and paths[key].stat().st_size > 5000


def test_markdown_and_terminal_table_show_headline_numbers(tmp_path):
    report = make_report()
    md = R.write_report(report, tmp_path)["markdown"].read_text()
    for text in ("48.33k", "13.77k", "47.91M", "11.98M", "93.50", "92.25", "-1.25 pt", "3.20x", "ort-cpu",
                 "batch 32", "**PASS**", "max_acc_drop", "0.0045", "block.conv", "16,16", "## Layers", "## Parity"):
        assert text in md, text
    p50_original_b32 = report["latency"]["ort-cpu"]["32"]["original"]["p50"]
    assert f"{p50_original_b32:,.2f}" in md

    table = R.headline_table(report)
    lines = table.splitlines()
    assert lines[0].split() == ["original", "compressed", "change"]
    for text in ("parameters", "48.33k", "MACs", "top-1", "93.50", "92.25", "batch 1", "batch 32", "3.20x",
                 "gate min_speedup: PASS"):
        assert text in table, text


def test_failed_gate_shows_as_fail(tmp_path):
    report = make_report(gates=evaluate_gates(max_acc_drop=None, min_speedup=5.0, max_parity_err=None,
                                              acc_drop=None, speedup=3.2, parity_err=None))
    assert report["gates_passed"] is False
    assert "**FAIL**" in R.write_report(report, tmp_path)["markdown"].read_text()
    assert "gate min_speedup: FAIL" in R.headline_table(report)


def test_slow_speedup_warning_only_below_half_the_mac_reduction():
    # MAC reduction is 4x: 1.9x is below half of it, 2.1x is not.
    slow = make_report(speedups=(1.9, 2.1))
    assert len(slow["warnings"]) == 1
    assert "ort-cpu batch 1" in slow["warnings"][0] and "1.90x" in slow["warnings"][0]
    assert make_report(speedups=(2.1, 3.0))["warnings"] == []
    assert make_report(speedups=(1.0, 1.5), warnings=["trt skipped"])["warnings"][0] == "trt skipped"
    assert len(make_report(speedups=(1.0, 1.5))["warnings"]) == 2


def test_accuracy_null_with_note_and_no_plan(tmp_path):
    report = R.build_report(params=(100, 50), macs=(1000, 250), accuracy=None, accuracy_note="no --data given",
                            latency={"torch": {1: paired(1, 2.0, 1.1)}}, environment={})
    assert report["accuracy"] is None and report["accuracy_note"] == "no --data given"
    assert report["params"]["ratio"] == 2.0 and report["mac_reduction"] == 4.0
    assert report["parity"] is None and report["gates"] == {} and report["gates_passed"] is None
    assert report["layers"] == [] and "torch batch 1" in report["warnings"][0]
    paths = R.write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["accuracy"] is None and data["accuracy_note"] == "no --data given"
    assert "no --data given" in paths["markdown"].read_text()
    assert paths["plot_layers"].read_bytes()[:8] == PNG
    assert R.build_report(environment={})["accuracy_note"]  # a reason is always given


def test_nan_becomes_null():
    class NanParity:
        def to_dict(self):
            return {"max_abs_err": float("nan"), "rel_l2_err": 0.1, "cosine": None, "top1_agreement": 1.0}

    report = R.build_report(parity=NanParity(), environment={})
    assert report["parity"]["max_abs_err"] is None
    json.dumps(report, allow_nan=False)


def test_failed_write_leaves_no_partial_files(tmp_path, monkeypatch):
    out = tmp_path / "run"
    good = make_report()
    R.write_report(good, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    bad = make_report()
    bad["model"]["weights"] = object()  # not JSON-serialisable
    with pytest.raises(TypeError):
        R.write_report(bad, out)
    with pytest.raises(TypeError):
        R.write_report(bad, tmp_path / "fresh")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())

    # A failure while renaming the last file: earlier files are complete, no temporary file is left.
    real_replace = R.os.replace

    def flaky_replace(src, dst):
        if str(dst).endswith("plot_latency.png"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(R.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk full"):
        R.write_report(make_report(speedups=(2.0, 2.0)), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
    assert json.loads((out / "report.json").read_text())["headline"]["speedup"] == 2.0


def test_report_from_a_real_compression(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(32, 10))
    result = tdexport.compress(net, rank="ratio:0.25", input_shape=(3, 16, 16), model_name="net")
    report = R.build_report(plan=result.plan, environment={})
    decomposed = [row for row in report["layers"] if row["decision"] == "decomposed"]
    assert decomposed and report["macs"]["ratio"] > 1
    paths = R.write_report(report, tmp_path, plan=result.plan)
    assert paths["plot_layers"].read_bytes()[:8] == PNG
    assert decomposed[0]["name"] in paths["markdown"].read_text()
