"""--precision on export and validate: reduced-precision ONNX files judged against their fp32 selves."""

from __future__ import annotations

import json

import onnx
import pytest

from tdexport.validate.reduced import parse_precisions, precision_acc_drop


def test_parse_precisions_puts_the_fp32_reference_first():
    assert parse_precisions("fp16") == ["fp32", "fp16"]
    assert parse_precisions("int8, fp32,fp16") == ["fp32", "int8", "fp16"]
    assert parse_precisions(None) == ["fp32"]


@pytest.mark.parametrize("text", ["fp64", "", "fp16,fp16", "fp32,bf8"])
def test_bad_precision_lists_are_usage_errors(text):
    from tdexport.errors import UsageError

    with pytest.raises(UsageError, match="precision"):
        parse_precisions(text)


def test_worst_precision_drop_names_where():
    block = {"note": "x", "fp16": {"backends": {"ort-cpu": {"top1_drop": 0.5}, "trt": {"top1_drop": None}}},
             "int8": {"backends": {"ort-cpu": {"top1_drop": 1.25}}}}
    assert precision_acc_drop(block) == (1.25, "int8 on ort-cpu")
    assert precision_acc_drop(None) is None


@pytest.mark.slow
def test_validate_judges_fp16_and_int8_against_fp32(baseline, cli, tmp_path):
    run, _ = baseline
    out = tmp_path / "v"
    code = cli(["validate", "--original", str(run), "--compressed", str(run), "--data", "digits",
                "--precision", "fp32,fp16,int8", "--calib-size", "64", "--batch-sizes", "1", "--duration", "0.2",
                "--iterations", "5", "--warmup", "0.1", "--out", str(out), "-q"])
    assert code == 0
    for name in ("original.fp16.onnx", "compressed.fp16.onnx", "original.int8.onnx", "compressed.int8.onnx"):
        assert (out / name).is_file()
    ops = {n.op_type for n in onnx.load(out / "compressed.int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    report = json.loads((out / "report.json").read_text())
    block = report["precision"]
    fp32_top1 = report["accuracy"]["ort-cpu"]["original"]["top1"]
    for precision, agree in (("fp16", 0.99), ("int8", 0.95)):
        result = block[precision]["backends"]["ort-cpu"]
        for side in ("original", "compressed"):
            assert result[side]["top1_agreement"] >= agree and result[side]["samples"] == 360
            assert result[side]["cosine"] >= 0.999
        assert result["top1_drop"] == pytest.approx(fp32_top1 - result["compressed"]["top1"])
        # ONNX Runtime CPU is not a speed result for reduced precision: no latency is reported there.
        assert result["latency"] is None
    assert block["int8"]["int8_target"] == "trt" and block["fp16"]["int8_target"] is None
    assert "## Precision" in (out / "report.md").read_text()


@pytest.mark.slow
def test_export_writes_one_precision(baseline, cli, tmp_path, capsys):
    run, _ = baseline
    out = tmp_path / "m.fp16.onnx"
    assert cli(["export", str(run), "--out", str(out), "--precision", "fp16"]) == 0
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert "top-1 agreement" in capsys.readouterr().out


def test_precision_usage_errors_exit_2(cli, tmp_path):
    out = tmp_path / "m.onnx"
    assert cli(["export", "resnet20", "--weights", "random", "--out", str(out), "--precision", "int8"]) == 2
    assert cli(["export", "resnet20", "--weights", "random", "--out", str(out), "--precision", "fp64"]) == 2
    assert not out.exists()
    assert cli(["validate", "--original", "resnet20", "--compressed", "resnet20", "--weights", "random",
                "--precision", "fp16", "--backend", "torch", "--out", str(tmp_path / "v")]) == 2
    assert cli(["validate", "--original", "resnet20", "--compressed", "resnet20", "--weights", "random",
                "--precision", "int8", "--out", str(tmp_path / "v2")]) == 2
