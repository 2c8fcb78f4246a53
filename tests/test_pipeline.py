"""compress-and-export and validate end to end on digits: run folder, report, gates, missing backends."""

import json

import pytest

pytestmark = pytest.mark.slow

FAST = ["--iterations", "3", "--duration", "0", "--warmup", "0"]


@pytest.fixture(scope="module")
def run_folder(baseline, tmp_path_factory, cli):
    base, metrics = baseline
    out = tmp_path_factory.mktemp("cae") / "run"
    code = cli(["compress-and-export", "resnet20", "--weights", str(base), "--data", "digits", "--rank", "ratio:0.5",
                "--finetune-epochs", "4", "--out", str(out), "-q"])
    assert code == 0
    return out, metrics


def test_run_folder_is_complete(run_folder):
    out, _ = run_folder
    for name in ("plan.json", "compressed.safetensors", "original.onnx", "compressed.onnx", "report.json",
                 "report.md", "plot_layers.png", "plot_latency.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert not (out / "train_state.pt").exists()
    assert not list(out.parent.glob(".run.*"))  # no temporary folder left beside it


def test_report_accuracy_latency_and_schema(run_folder):
    out, base_metrics = run_folder
    r = json.loads((out / "report.json").read_text())
    assert r["schema_version"] >= 1
    assert r["macs"]["ratio"] == pytest.approx(2.6, abs=0.2)
    assert r["params"]["original"] > r["params"]["compressed"] > 0
    acc = r["accuracy"]["ort-cpu"]
    assert acc["samples"] == 360 and acc["dataset"] == "digits"
    assert acc["original"]["top1"] == pytest.approx(base_metrics["final_test_top1"], abs=0.3)
    assert acc["compressed"]["top1"] >= acc["original"]["top1"] - 1.0
    lat = r["latency"]["ort-cpu"]
    assert set(lat) == {"1", "32"}
    for block in lat.values():
        for side in ("original", "compressed"):
            s = block[side]
            assert s["count"] >= 50 and 0 < s["p50"] <= s["p90"] <= s["p95"] <= s["p99"]
            assert {"mean", "stdev", "throughput"} <= set(s)
    assert lat["32"]["speedup"] > 1.0
    assert r["parity"]["rel_l2_err"] < 1e-4 and r["parity"]["top1_agreement"] == 1.0
    assert "original" in (out / "report.md").read_text().lower()


@pytest.mark.parametrize(("flag", "value", "gate"), [("--max-acc-drop", "-5", "max_acc_drop"),
                                                     ("--min-speedup", "1000", "min_speedup"),
                                                     ("--max-parity-err", "1e-15", "max_parity_err")])
def test_each_gate_exits_3_and_names_itself(run_folder, baseline, tmp_path, capsys, cli, flag, value, gate):
    run, _ = run_folder
    base, _ = baseline
    out = tmp_path / "v"
    code = cli(["validate", "--original", str(base), "--compressed", str(run), "--data", "digits", "--limit", "64",
                "--batch-sizes", "4", *FAST, flag, value, "--out", str(out), "-q"])
    assert code == 3
    assert gate in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())  # the report is written before exiting
    assert report["gates"][gate]["passed"] is False


def test_validate_passes_gates_on_onnx_files(run_folder, tmp_path, cli):
    run, _ = run_folder
    out = tmp_path / "v"
    code = cli(["validate", "--original", str(run / "original.onnx"), "--compressed", str(run / "compressed.onnx"),
                "--data", "digits", "--batch-sizes", "8", *FAST, "--max-acc-drop", "1", "--out", str(out), "-q"])
    assert code == 0
    r = json.loads((out / "report.json").read_text())
    assert r["macs"]["ratio"] == pytest.approx(2.6, abs=0.2)  # counted from the ONNX graphs
    assert r["parity"] is None and "no torch model" in r["parity_note"]
    assert r["gates"]["max_acc_drop"]["passed"] is True


@pytest.mark.parametrize("backend", ["ort-cuda", "trt"])
def test_missing_backend_exits_4(run_folder, tmp_path, capsys, cli, backend):
    from tdexport.runtime import available_backends

    if available_backends()[backend] is None:
        pytest.skip(f"{backend} works on this machine")
    run, _ = run_folder
    code = cli(["validate", "--original", str(run / "original.onnx"), "--compressed", str(run / "compressed.onnx"),
                "--backend", backend, "--batch-sizes", "1", *FAST, "--out", str(tmp_path / "v"), "-q"])
    err = capsys.readouterr().err
    assert code == 4
    assert ("tensorrt" in err.lower()) if backend == "trt" else ("CUDA" in err)
