"""Gates, report.json / report.md / plots, the MAC-vs-speedup warning, and atomic report writing."""

import json
import math
import statistics
import warnings
from datetime import datetime, timezone

import pytest
import torch
from torch import nn

import tdexport
from tdexport.errors import GateFailed, UsageError
from tdexport.plan import LayerPlan, Plan
from tdexport.validate import report as R
from tdexport.validate.accuracy import Accuracy
from tdexport.validate.gates import GATES, Gate, evaluate_gates, failed_gates, raise_if_failed
from tdexport.validate.latency import SPEEDUP_METHOD, SPEEDUP_METHOD_TEXT, PairedLatency, latency_stats
from tdexport.validate.parity import ParityResult

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


ORIGINAL_PARITY = ParityResult(max_abs_err=2.4e-6, rel_l2_err=3.1e-7, cosine=1.0, top1_agreement=1.0, samples=8)
COMPRESSED_PARITY = ParityResult(max_abs_err=0.0123, rel_l2_err=0.0045, cosine=0.99998, top1_agreement=0.995,
                                 samples=8)


def paired(batch, original_ms, speedup):
    """A PairedLatency of two ABBA rounds of 3 runs, the compressed model ``speedup`` times faster."""
    orig = [original_ms * f for f in (0.98, 1.0, 1.01, 1.03, 0.99, 1.02)]
    comp = [t / speedup for t in orig]
    medians = tuple((statistics.median(orig[i:i + 3]), statistics.median(comp[i:i + 3])) for i in (0, 3))
    return PairedLatency(batch, latency_stats(orig, batch), latency_stats(comp, batch), speedup,
                         (speedup * 0.95, speedup * 1.05), rounds=2, round_size=3, round_medians=medians,
                         warmup_calls=(4, 9))


def make_report(speedups=(3.0, 3.2), **overrides):
    accuracy = {"ort-cpu": {"original": Accuracy(93.5, 99.1, 1000), "compressed": Accuracy(92.25, 98.8, 1000),
                            "dataset": "digits"}}
    latency = {"ort-cpu": {32: paired(32, 80.0, speedups[1]), 1: paired(1, 4.0, speedups[0])}}
    gates = evaluate_gates(max_acc_drop=2.0, min_speedup=1.5, max_parity_err=None,
                           acc_drop=93.5 - 92.25, speedup=speedups[1], parity_err=0.0045)
    kwargs = {"plan": tiny_plan(), "model": {"weights": "random"}, "accuracy": accuracy,
              "parity": {"ort-cpu": {"original": ORIGINAL_PARITY, "compressed": COMPRESSED_PARITY}},
              "parity_inputs": "the first 8 test images of digits",
              "latency": latency, "gates": gates, "environment": {"threads": {"torch_threads": 2}},
              "created": datetime(2026, 11, 26, 9, 30, tzinfo=timezone.utc)}
    kwargs.update(overrides)
    return R.build_report(**kwargs)


def test_write_report_json_has_every_key_with_its_type(tmp_path):
    paths = R.write_report(make_report(), tmp_path / "run", plan=tiny_plan())
    assert set(paths) == {"json", "markdown", "plot_layers", "plot_latency"}
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "plot_layers.png", "plot_latency.png"}
    data = json.loads(paths["json"].read_text())

    assert data["schema_version"] == 2
    assert datetime.fromisoformat(data["created"]) == datetime(2026, 11, 26, 9, 30, tzinfo=timezone.utc)
    env = data["environment"]
    for key in ("python", "torch", "onnx", "onnxruntime", "tensorrt", "cpu_count", "threads", "backends", "device",
                "providers", "onnxruntime_available_providers"):
        assert key in env
    assert torch.__version__.startswith(env["torch"].split("+")[0])
    assert env["tensorrt"] is None or isinstance(env["tensorrt"], str)
    assert env["threads"] == {"torch_threads": 2}
    # No backend facts passed: nothing is claimed about the device or providers used.
    assert (env["backends"], env["device"], env["providers"]) == ({}, None, [])
    assert data["model"] == {"name": "tiny", "format": "tucker2", "rank_rule": "ratio:0.25",
                             "input_shape": [3, 32, 32], "num_classes": 10, "weights": "random"}

    assert data["params"] == {"original": 48_330, "compressed": 13_770, "ratio": pytest.approx(48_330 / 13_770)}
    assert data["macs"]["ratio"] == pytest.approx(4.0) == data["mac_reduction"]

    acc = data["accuracy"]["ort-cpu"]
    assert acc["original"] == {"top1": 93.5, "top5": 99.1} and acc["compressed"] == {"top1": 92.25, "top5": 98.8}
    assert (acc["dataset"], acc["samples"], acc["top1_drop"]) == ("digits", 1000, 1.25)
    assert data["accuracy_note"] is None

    assert data["parity"] == {"ort-cpu": {"original": ORIGINAL_PARITY.to_dict(),
                                          "compressed": COMPRESSED_PARITY.to_dict()}}
    reference = data["parity_reference"]
    assert "ort-cpu" in reference and "PyTorch fp32 eager of the same model" in reference
    assert "same 8 inputs (the first 8 test images of digits)" in reference
    assert data["parity_note"] is None

    lat = data["latency"]["ort-cpu"]
    assert list(lat) == ["1", "32"]
    for block in lat.values():
        assert set(block) == {"original", "compressed", "speedup", "speedup_spread", "rounds", "p50_ratio",
                              "speedup_method", "order", "round_size", "warmup_calls"}
        for which in ("original", "compressed"):
            stats = block[which]
            for key in ("count", "mean", "stdev", "p50", "p90", "p95", "p99", "throughput"):
                assert isinstance(stats[key], (int, float))
            assert stats["count"] == 6
        assert isinstance(block["speedup_spread"], list) and len(block["speedup_spread"]) == 2
        assert block["p50_ratio"] == block["original"]["p50"] / block["compressed"]["p50"]
        assert (block["speedup_method"], block["order"], block["round_size"], block["rounds"]) == \
            (SPEEDUP_METHOD, "ABBA", 3, 2)
        assert block["warmup_calls"] == [4, 9]
    assert lat["32"]["original"]["throughput"] == pytest.approx(32 * 1000 / lat["32"]["original"]["mean"])
    assert data["speedup_definition"] == SPEEDUP_METHOD_TEXT
    assert data["headline"] == {"backend": "ort-cpu", "batch": 32, "speedup": 3.2,
                                "p50_ratio": lat["32"]["p50_ratio"], "speedup_method": SPEEDUP_METHOD,
                                "acc_drop": 1.25, "parity_err": 0.0045, "parity_backend": "ort-cpu"}

    assert isinstance(data["warnings"], list)
    assert data["gates"] == {"max_acc_drop": {"limit": 2.0, "value": 1.25, "passed": True},
                             "min_speedup": {"limit": 1.5, "value": 3.2, "passed": True}}
    assert data["gates_passed"] is True

    assert [row["name"] for row in data["layers"]] == ["conv1", "block.conv", "block.proj", "fc"]
    conv = data["layers"][1]
    assert conv == {"name": "block.conv", "type": "Conv2d", "shape": [64, 64, 3, 3], "decision": "decomposed",
                    "method": "tucker2", "ranks": [16, 16], "params_before": 36_928, "params_after": 4_416,
                    "macs_before": 37_748_736, "macs_after": 4_456_448, "rel_error": 0.41,
                    "reason": "rank rule ratio:0.25", "dense_ms": None, "chain_ms": None, "modes": None,
                    "storage_ratio": None}
    assert data["target"] is None  # the plan was made without a target

    for key in ("plot_layers", "plot_latency"):
        assert paths[key].read_bytes()[:8] == PNG and paths[key].stat().st_size > 5000


def test_markdown_and_terminal_table_show_headline_numbers(tmp_path):
    report = make_report()
    md = R.write_report(report, tmp_path)["markdown"].read_text()
    for text in ("48.33k", "13.77k", "47.91M", "11.98M", "93.50", "92.25", "-1.25 pt", "3.20x paired", "ort-cpu",
                 "batch 32", "**PASS**", "max_acc_drop", "block.conv", "16,16", "## Layers", "## Parity",
                 SPEEDUP_METHOD_TEXT, GATES["min_speedup"][0], "p50 ratio"):
        assert text in md, text
    p50_original_b32 = report["latency"]["ort-cpu"]["32"]["original"]["p50"]
    assert f"{p50_original_b32:,.2f}" in md
    ratio_b32 = report["latency"]["ort-cpu"]["32"]["p50_ratio"]
    assert f"p50 ratio {ratio_b32:.2f}x" in md

    table = R.headline_table(report)
    lines = table.splitlines()
    assert lines[0].split() == ["original", "compressed", "change"]
    for text in ("parameters", "48.33k", "MACs", "top-1", "93.50", "92.25", "batch 1", "batch 32", "3.20x paired",
                 f"p50 ratio {ratio_b32:.2f}x", SPEEDUP_METHOD_TEXT, "gate min_speedup: PASS",
                 "logit rel. L2 error vs torch fp32 (ort-cpu)", "3.1e-07", "0.0045"):
        assert text in table, text


def test_markdown_parity_table_per_backend_and_model(tmp_path):
    parity = {"ort-cpu": {"original": ORIGINAL_PARITY, "compressed": COMPRESSED_PARITY},
              "ort-cuda": {"original": None, "compressed": COMPRESSED_PARITY}}
    md = R.write_report(make_report(parity=parity, parity_note="original not run on ort-cuda"),
                        tmp_path)["markdown"].read_text()
    assert "| backend | model | max_abs_err | rel_l2_err | cosine | top1_agreement | samples |" in md
    assert "| ort-cpu | original | 2.4e-06 | 3.1e-07 | 1 | 1 | 8 |" in md
    assert "| ort-cpu | compressed | 0.0123 | 0.0045 | 0.99998 | 0.995 | 8 |" in md
    assert "| ort-cuda | original | not measured | - | - | - | - |" in md
    assert "Compared: logits of each backend (ort-cpu, ort-cuda) vs PyTorch fp32 eager" in md
    assert "Note: original not run on ort-cuda" in md


def test_parity_headline_is_the_worst_compressed_error_over_backends():
    worse_original = ParityResult(0.5, 0.9, 0.5, 0.5, 8)  # the original's error is not what the gate judges
    parity = {"ort-cpu": {"original": worse_original, "compressed": COMPRESSED_PARITY},
              "ort-cuda": {"original": None, "compressed": ParityResult(0.1, 0.02, 0.999, 1.0, 9)},
              "trt": {"original": ORIGINAL_PARITY, "compressed": None}}
    values = R.headline_values(parity=parity)
    assert (values["parity_err"], values["parity_backend"]) == (0.02, "ort-cuda")
    report = make_report(parity=parity)
    assert report["headline"]["parity_err"] == 0.02 and report["parity"]["trt"]["compressed"] is None
    assert "(8 or 9 per comparison)" in report["parity_reference"]
    assert R.headline_values(parity={"trt": {"original": ORIGINAL_PARITY, "compressed": None}})["parity_err"] is None
    assert R.headline_values()["parity_err"] is None


def test_nan_parity_fails_the_gate_instead_of_being_skipped():
    nan = ParityResult(float("nan"), float("nan"), float("nan"), 0.0, 8)
    parity = {"ort-cpu": {"original": None, "compressed": COMPRESSED_PARITY},
              "ort-cuda": {"original": None, "compressed": nan}}
    values = R.headline_values(parity=parity)
    assert math.isnan(values["parity_err"]) and values["parity_backend"] == "ort-cuda"
    gates = evaluate_gates(max_acc_drop=None, min_speedup=None, max_parity_err=1e-2, acc_drop=None, speedup=None,
                           parity_err=values["parity_err"])
    assert gates["max_parity_err"] == Gate("max_parity_err", 1e-2, None, False)
    report = make_report(parity=parity)
    assert report["headline"]["parity_err"] is None and report["parity"]["ort-cuda"]["compressed"]["cosine"] is None
    json.dumps(report, allow_nan=False)


def test_parity_input_forms():
    none = R.build_report(environment={}, parity_note="the compressed model was given as ONNX")
    assert none["parity"] is None and none["parity_reference"] is None
    assert none["parity_note"] == "the compressed model was given as ONNX"
    assert R.build_report(environment={})["parity_note"] == "parity was not measured"
    as_dicts = R.build_report(environment={}, parity={"ort-cpu": {"compressed": {"rel_l2_err": 0.1, "extra": 1}}})
    assert as_dicts["parity"]["ort-cpu"] == {"original": None, "compressed": {
        "max_abs_err": None, "rel_l2_err": 0.1, "cosine": None, "top1_agreement": None, "samples": None, "extra": 1}}
    with pytest.raises(ValueError, match="reference"):
        R.build_report(environment={}, parity={"torch": {"compressed": COMPRESSED_PARITY}})
    with pytest.raises(ValueError, match="'original' and/or 'compressed'"):
        R.build_report(environment={}, parity={"ort-cpu": {"candidate": COMPRESSED_PARITY}})


def test_single_parity_result_is_deprecated_and_read_as_ort_cpu_compressed():
    with pytest.warns(DeprecationWarning, match="removed in tdexport 0.2"):
        report = R.build_report(environment={}, parity=COMPRESSED_PARITY)
    assert report["parity"] == {"ort-cpu": {"original": None, "compressed": COMPRESSED_PARITY.to_dict()}}
    assert report["headline"]["parity_err"] == 0.0045
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_report()  # the per-backend form does not warn


def test_gate_texts_say_exactly_what_they_judge():
    parity_text, upper = GATES["max_parity_err"]
    assert upper and "largest" in parity_text and "compressed" in parity_text
    assert "PyTorch fp32 eager of the same model on the same inputs" in parity_text
    speedup_text, upper = GATES["min_speedup"]
    assert not upper and "median" in speedup_text and "not the ratio of the two p50s" in speedup_text


def test_p50_ratio_is_recomputed_from_the_stats_and_drift_is_flagged():
    block = paired(8, 10.0, 3.0).to_dict()
    block["p50_ratio"] = 99.0  # a stale or hand-edited value cannot contradict the p50s beside it
    report = R.build_report(macs=(400, 100), latency={"ort-cpu": {8: block}}, environment={})
    out = report["latency"]["ort-cpu"]["8"]
    assert out["p50_ratio"] == out["original"]["p50"] / out["compressed"]["p50"] == pytest.approx(3.0)
    assert report["warnings"] == []

    drifted = paired(8, 10.0, 3.0).to_dict() | {"speedup": 2.0}  # p50s say 3x, paired rounds said 2x
    report = R.build_report(macs=(400, 100), latency={"ort-cpu": {8: drifted}}, environment={})
    assert len(report["warnings"]) == 1
    assert "ratio of the p50s (3.00x) differs from the paired speedup (2.00x)" in report["warnings"][0]
    assert report["headline"]["speedup"] == 2.0 and report["headline"]["p50_ratio"] == pytest.approx(3.0)


def test_schema_1_latency_dicts_still_render():
    old = {k: v for k, v in paired(4, 5.0, 2.0).to_dict().items()
           if k in ("original", "compressed", "speedup", "speedup_spread", "rounds")}
    report = R.build_report(latency={"torch": {4: old}}, environment={})
    block = report["latency"]["torch"]["4"]
    assert block["speedup_method"] is None and block["warmup_calls"] is None
    assert block["p50_ratio"] == pytest.approx(2.0)
    assert "2.00x paired" in R.headline_table(report)


def test_environment_records_what_each_backend_used():
    env = R.environment_info(threads={"torch_threads": 1}, backends={
        "ort-cuda": {"device": "cuda:0 (NVIDIA L4)", "providers": ("CUDAExecutionProvider", "CPUExecutionProvider")},
        "ort-cpu": {"device": "cpu", "providers": ["CPUExecutionProvider"], "threads": 1},
        "torch": {"device": "cpu", "threads": 2}})
    assert env["device"] == "cuda:0 (NVIDIA L4), cpu"
    assert env["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert env["backends"]["ort-cuda"]["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert env["backends"]["torch"] == {"device": "cpu", "threads": 2}
    assert isinstance(env["onnxruntime_available_providers"], list)
    with pytest.raises(ValueError, match="'device'"):
        R.environment_info(backends={"torch": {"threads": 2}})
    report = make_report(environment=env)
    md = R.render_markdown(report, [])
    assert "- backends (what each really ran on):" in md
    assert "  - ort-cuda: device cuda:0 (NVIDIA L4), providers CUDAExecutionProvider, CPUExecutionProvider" in md


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
    md = paths["markdown"].read_text()
    assert "no --data given" in md and "Parity not measured." in md
    assert paths["plot_layers"].read_bytes()[:8] == PNG
    assert R.build_report(environment={})["accuracy_note"]  # a reason is always given


def test_report_module_keeps_its_public_names_and_stays_light():
    import subprocess
    import sys

    for name in ("SCHEMA_VERSION", "SLOW_SPEEDUP_FRACTION", "build_report", "environment_info", "headline_table",
                 "headline_values", "write_report"):
        assert hasattr(R, name), name
    code = ("import sys, tdexport.validate.report; "
            "sys.exit(len([m for m in ('torch', 'matplotlib') if m in sys.modules]))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


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
    import tdexport._io as io_mod
    real_replace = io_mod.os.replace

    def flaky_replace(src, dst):
        if str(dst).endswith("plot_latency.png"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", flaky_replace)
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


def test_a_compressed_model_slower_than_the_original_is_a_warning():
    report = make_report(speedups=(0.96, 2.5))
    slower = [w for w in report["warnings"] if "SLOWER" in w]
    assert len(slower) == 1 and "batch 1" in slower[0] and "0.96x" in slower[0] and "--target" in slower[0]
    assert not any("SLOWER" in w for w in make_report(speedups=(1.0, 2.5))["warnings"])


def test_target_block_and_layer_times_in_the_report(tmp_path):
    plan = tiny_plan().to_dict()
    plan["options"]["target"] = {"backend": "ort-cpu", "batch": 32, "precision": "fp32", "threads": None}
    times = {"conv1": None, "block.conv": (0.50, 0.20), "block.proj": (0.10, 0.12), "fc": None}
    for entry in plan["layers"]:
        if times[entry["name"]]:
            entry["dense_ms"], entry["chain_ms"] = times[entry["name"]]
    plan["layers"][2]["decision"] = "kept"  # its chain was slower
    report = R.build_report(plan=plan, latency={"ort-cpu": {32: paired(32, 4.0, 2.5)}}, environment={})
    target = report["target"]
    assert (target["backend"], target["batch"], target["layers_timed"]) == ("ort-cpu", 32, 2)
    assert target["dense_ms"] == pytest.approx(0.60) and target["planned_ms"] == pytest.approx(0.30)
    assert target["saved_ms"] == pytest.approx(0.30)
    assert target["measured_speedup"] == report["latency"]["ort-cpu"]["32"]["speedup"]
    assert target["predicted_speedup"] is None  # only latency: rules predict a whole-model speedup
    paths = R.write_report(report, tmp_path, plan=plan)
    md = paths["markdown"].read_text()
    assert "## Target" in md and "0.500→0.200" in md
    assert paths["plot_layers"].read_bytes()[:8] == PNG
