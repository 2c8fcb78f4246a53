"""compress-and-export and validate end to end on digits: run folder, report, gates, missing backends.

Everything asserted here is what the code guarantees on any machine (files, exact relations between
reported numbers, exit codes, parity bounds the export enforces), never an accuracy reached after a few
epochs or a measured speedup.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import tdexport
from tdexport._io import output_mode
from tdexport.cli import main

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
                 "report.md", "plot_layers.png", "plot_latency.png", "metrics.json", "run.json"):
        assert (out / name).is_file(), name
    assert not (out / "train_state.pt").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]  # no staging or .partial folder beside it
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {output_mode()}
    assert out.stat().st_mode & 0o777 == output_mode(directory=True)


def test_report_accuracy_latency_parity_and_schema(run_folder):
    out, base_metrics = run_folder
    r = json.loads((out / "report.json").read_text())
    assert r["schema_version"] >= 2
    # Which layers pay on the default target (ort-cpu at batch 32) is measured, so the MAC ratio depends on the
    # machine; it must agree with the plan, and every decomposed layer must have been faster there.
    plan = json.loads((out / "plan.json").read_text())
    assert plan["options"]["target"]["backend"] == "ort-cpu" and plan["options"]["target"]["batch"] == 32
    totals = plan["totals"]
    assert r["macs"]["ratio"] == pytest.approx(totals["macs_before"] / totals["macs_after"], rel=0.02)
    assert all(e["chain_ms"] < e["dense_ms"] for e in plan["layers"] if e["decision"] == "decomposed")
    assert all("factor chain" in e["reason"] for e in plan["layers"] if e["decision"] == "kept"
               and e["chain_ms"] is not None)
    assert r["params"]["original"] > r["params"]["compressed"] > 0
    acc = r["accuracy"]["ort-cpu"]
    assert acc["samples"] == 360 and acc["dataset"] == "digits"
    # ONNX Runtime fp32 and torch agree to ~1e-6, so only a near-tie sample (1/360 = 0.28 points) can differ
    assert acc["original"]["top1"] == pytest.approx(base_metrics["final_test_top1"], abs=0.3)
    assert acc["top1_drop"] == pytest.approx(acc["original"]["top1"] - acc["compressed"]["top1"])
    lat = r["latency"]["ort-cpu"]
    assert set(lat) == {"1", "32"}
    for block in lat.values():
        for side in ("original", "compressed"):
            s = block[side]
            assert s["count"] >= 50 and 0 < s["p50"] <= s["p90"] <= s["p95"] <= s["p99"]
            assert {"mean", "stdev", "throughput"} <= set(s)
        assert block["p50_ratio"] == pytest.approx(block["original"]["p50"] / block["compressed"]["p50"])
        low, high = block["speedup_spread"]
        assert math.isfinite(block["speedup"]) and low <= block["speedup"] <= high
    parity = r["parity"]["ort-cpu"]
    for side in ("original", "compressed"):  # what every export must meet before it is written
        assert parity[side]["rel_l2_err"] < 1e-4 and parity[side]["samples"] == 8
    assert "PyTorch" in r["parity_reference"]
    assert r["environment"]["backends"]["ort-cpu"]["providers"] == ["CPUExecutionProvider"]
    assert "original" in (out / "report.md").read_text().lower()


@pytest.mark.parametrize(("flag", "value", "gate"), [("--max-acc-drop", "-5", "max_acc_drop"),
                                                     ("--min-speedup", "1000", "min_speedup"),
                                                     ("--max-parity-err", "0", "max_parity_err")])
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
    if gate == "max_parity_err":  # judged on the measured per-backend parity, after the export's own check passed
        assert report["gates"][gate]["value"] == report["parity"]["ort-cpu"]["compressed"]["rel_l2_err"] > 0


def test_parity_gate_passes_at_a_limit_above_the_measured_error(run_folder, baseline, tmp_path, cli):
    run, _ = run_folder
    base, _ = baseline
    out = tmp_path / "v"
    assert cli(["validate", "--original", str(base), "--compressed", str(run), "--batch-sizes", "2", *FAST,
                "--backend", "ort-cpu,torch", "--max-parity-err", "1e-4", "--out", str(out), "-q"]) == 0
    r = json.loads((out / "report.json").read_text())
    assert set(r["parity"]) == {"ort-cpu"}  # torch is the reference, not a backend under test
    assert r["gates"]["max_parity_err"]["value"] == r["parity"]["ort-cpu"]["compressed"]["rel_l2_err"]
    assert r["accuracy"] is None and set(r["latency"]) == {"ort-cpu", "torch"}


def test_validate_passes_gates_on_onnx_files(run_folder, tmp_path, cli):
    run, _ = run_folder
    out = tmp_path / "v"
    code = cli(["validate", "--original", str(run / "original.onnx"), "--compressed", str(run / "compressed.onnx"),
                "--data", "digits", "--batch-sizes", "8", *FAST, "--max-acc-drop", "100", "--out", str(out), "-q"])
    assert code == 0
    r = json.loads((out / "report.json").read_text())
    # counted from the ONNX graphs: the same ratio compress-and-export reported from the modules
    assert r["macs"]["ratio"] == pytest.approx(json.loads((run / "report.json").read_text())["macs"]["ratio"],
                                               rel=0.02)
    assert r["parity"]["ort-cpu"] == {"original": None, "compressed": None}
    assert r["gates"]["max_acc_drop"]["passed"] is True


def test_fixed_batch_onnx_files_validate(run_folder, baseline, tmp_path, cli):
    run, _ = run_folder
    base, _ = baseline
    for name, src in (("orig4.onnx", base), ("comp4.onnx", run)):
        assert cli(["export", str(src), "--batch", "4", "--out", str(tmp_path / name)]) == 0
    out = tmp_path / "v"
    assert cli(["validate", "--original", str(tmp_path / "orig4.onnx"), "--compressed", str(tmp_path / "comp4.onnx"),
                "--data", "digits", *FAST, "--out", str(out), "-q"]) == 0
    r = json.loads((out / "report.json").read_text())
    assert set(r["latency"]["ort-cpu"]) == {"4"}  # the only batch such a graph runs
    assert r["accuracy"]["ort-cpu"]["samples"] == 360  # 360 = 90 × 4, each batch split or padded to 4
    assert cli(["validate", "--original", str(tmp_path / "orig4.onnx"), "--compressed", str(tmp_path / "comp4.onnx"),
                "--batch-sizes", "1", *FAST, "--out", str(tmp_path / "v2"), "-q"]) == 2


def test_validate_out_refuses_a_non_empty_folder_and_overwrite_replaces_it(run_folder, tmp_path, cli, capsys):
    run, _ = run_folder
    out = tmp_path / "v"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    args = ["validate", "--original", str(run / "original.onnx"), "--compressed", str(run / "compressed.onnx"),
            "--batch-sizes", "2", *FAST, "--out", str(out), "-q"]
    assert cli(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert cli([*args, "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "report.json").is_file()


@pytest.fixture(scope="module")
def seven_class(tmp_path_factory):
    out = tmp_path_factory.mktemp("seven") / "r20-7"
    tdexport.save(out, tdexport.compress("resnet20", rank="ratio:0.5", weights="random", num_classes=7))
    return out


def test_class_count_mismatch_exits_2_naming_both_counts(baseline, seven_class, tmp_path, cli, capsys):
    base, _ = baseline
    code = cli(["validate", "--original", str(base), "--compressed", str(seven_class), *FAST,
                "--out", str(tmp_path / "a"), "-q"])
    assert code == 2 and "10 output classes, the compressed one 7" in capsys.readouterr().err
    code = cli(["validate", "--original", "resnet20", "--weights", "random", "--num-classes", "7",
                "--compressed", str(seven_class), "--data", "digits", *FAST, "--out", str(tmp_path / "b"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "7 output classes but --data digits has 10" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _write_imagenet_subset(root: Path) -> None:
    # three ImageNet-1k classes (canonical indices 0, 207, 999), two validation images each
    for k, wnid in enumerate(("n01440764", "n02099601", "n15075141")):
        for j in range(2):
            path = root / "val" / wnid / f"{wnid}_{j}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (40 * k + j, 90, 200 - 30 * k)).save(path, format="JPEG")


def test_imagenet_subset_is_scored_in_the_canonical_label_space(tmp_path, cli):
    root = tmp_path / "imagenette"
    _write_imagenet_subset(root)
    comp = tmp_path / "r18"
    tdexport.save(comp, tdexport.compress("resnet18", rank="ratio:0.5", weights="random", iters=0))
    out = tmp_path / "v"
    # the torch backend: the label mapping is what is under test here, not the export
    assert cli(["validate", "--original", "resnet18", "--weights", "random", "--compressed", str(comp),
                "--data", f"imagenet:{root}", "--backend", "torch", "--batch-sizes", "1", *FAST, "--out", str(out),
                "-q"]) == 0
    acc = json.loads((out / "report.json").read_text())["accuracy"]["torch"]
    assert acc["samples"] == 6
    # the logits are restricted to the 3 classes present, so top-5 contains every label: exactly 100 %
    assert acc["original"]["top5"] == acc["compressed"]["top5"] == 100.0


# ---------------------------------------------------------------------------------------------- no work lost


def test_compress_and_export_checks_before_compressing(baseline, tmp_path, cli, capsys):
    base, _ = baseline
    out = tmp_path / "run"
    common = ["compress-and-export", "resnet20", "--weights", str(base), "--rank", "ratio:0.5", *FAST]
    from tdexport.runtime import available_backends

    if available_backends()["ort-cuda"] is not None:  # where CUDA works there is no missing backend to refuse
        assert cli([*common, "--backend", "ort-cuda", "--out", str(out), "-q"]) == 4
    assert cli([*common, "--num-classes", "7", "--weights", "random", "--data", "digits", "--out", str(out),
                "-q"]) == 2
    assert "7 output classes but --data digits has 10" in capsys.readouterr().err
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("mine")
    assert cli([*common, "--out", str(out), "-q"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing else created, no .partial
    assert cli([*common, "--out", str(out), "--overwrite", "--batch-sizes", "2", "-q"]) == 0
    assert not (out / "keep.txt").exists() and (out / "report.json").is_file()


def test_failure_after_finetuning_keeps_the_work_and_resume_does_not_repeat_it(baseline, tmp_path, cli, capsys,
                                                                                 monkeypatch):
    from tdexport import pipeline

    base, _ = baseline
    out = tmp_path / "run"
    args = ["compress-and-export", "resnet20", "--weights", str(base), "--data", "digits", "--rank", "ratio:0.5",
            "--finetune-epochs", "1", "--batch-sizes", "2", "--limit", "32", *FAST, "--out", str(out), "-q"]

    def crash(*_a, **_k):
        raise RuntimeError("simulated crash after fine-tuning")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "validate_into", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            main(args)
    partial = tmp_path / "run.partial"
    assert "kept in" in capsys.readouterr().err and not out.exists()
    metrics = (partial / "metrics.json").read_text()
    weights = (partial / "compressed.safetensors").read_bytes()
    assert json.loads((partial / "run.json").read_text())["stage"] == "finetuned"
    assert cli(args) == 2 and "--resume" in capsys.readouterr().err  # a stale partial is never overwritten silently
    assert cli([*args, "--resume"]) == 0
    assert not partial.exists()
    assert (out / "metrics.json").read_text() == metrics  # fine-tuning was not run again
    assert (out / "compressed.safetensors").read_bytes() == weights
    assert (out / "report.json").is_file()


def test_interrupted_finetuning_resumes(baseline, tmp_path, interrupt_after_first_epoch):
    base, _ = baseline
    out = tmp_path / "run"
    args = [sys.executable, "-m", "tdexport", "compress-and-export", "resnet20", "--weights", str(base), "--data",
            "digits", "--rank", "ratio:0.5", "--finetune-epochs", "2", "--batch-size", "128", "--batch-sizes", "2",
            "--limit", "32", *FAST, "--out", str(out), "-q"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Ctrl-C once epoch 1 is on disk, during epoch 2
    code, err = interrupt_after_first_epoch(args, tmp_path / "run.partial" / "metrics.json", env)
    assert code == 130, err
    assert "--resume" in err and "run.partial" in err
    assert (tmp_path / "run.partial" / "train_state.pt").is_file() and not out.exists()
    res = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    done = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in done["epochs"]] == [1, 2]
    assert not (out / "train_state.pt").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.parametrize("backend", ["ort-cuda", "trt"])
def test_missing_backend_exits_4(run_folder, tmp_path, capsys, cli, backend):
    from tdexport.runtime import available_backends

    if available_backends()[backend] is None:
        pytest.skip(f"{backend} works on this machine, so there is no missing-backend error to check")
    run, _ = run_folder
    code = cli(["validate", "--original", str(run / "original.onnx"), "--compressed", str(run / "compressed.onnx"),
                "--backend", backend, "--batch-sizes", "1", *FAST, "--out", str(tmp_path / "v"), "-q"])
    err = capsys.readouterr().err
    assert code == 4
    assert ("tensorrt" in err.lower()) if backend == "trt" else ("CUDA" in err)
    assert not (tmp_path / "v").exists()


def test_inspect_a_dense_run_folder(baseline, cli, capsys):
    base, _ = baseline
    assert cli(["inspect", str(base)]) == 0
    out = capsys.readouterr().out
    assert "eligible for tucker2" in out and out.strip().splitlines()[-1].startswith("resnet20 tucker2 [dense]")
