"""fp16 / int8 ONNX files (tdexport.export.precision) from the trained digits ResNet-20, run on ONNX Runtime CPU.

The `baseline` fixture's model is exported as is and after a mild Tucker compression (``ratio:0.75``, no
fine-tuning); both are converted and judged on the 360 digits test images by top-1 accuracy and by agreement
with their own float32 logits. Measured numbers are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper
from threads import one_thread

import tdexport
from tdexport.data import load_data
from tdexport.errors import UsageError
from tdexport.export.onnx import export_onnx
from tdexport.export.precision import (
    FP16_KEEP_FP32,
    INT8_TARGETS,
    PRECISIONS,
    agreement,
    calibration_batches,
    check_trt_qdq,
    convert,
    to_fp16,
)
from tdexport.runtime import OrtRunner

SHAPE = (3, 32, 32)
CALIBRATION = 256  # train-split images
TIMING_BATCH = 32



def _run(path, images):
    """(logits of all images, median ms of one ONNX Runtime CPU batch of TIMING_BATCH images)."""
    with OrtRunner(path, provider="cpu") as runner:
        logits = np.concatenate([runner.infer(images[i:i + 120]) for i in range(0, len(images), 120)])
        batch = images[:TIMING_BATCH]
        runner.infer(batch)  # warm-up
        times = []
        for _ in range(7):
            start = time.perf_counter()
            runner.infer(batch)
            times.append(1e3 * (time.perf_counter() - start))
    return logits, float(np.median(times))


def _top1(logits, labels):
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels))


def _initializer(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


@pytest.fixture(scope="module")
def digits_test():
    images, labels = load_data("digits", augment=False).test.tensors
    return images.numpy(), labels.numpy()


def _torch_top1(model, images, labels):
    with torch.inference_mode():
        return _top1(model(torch.from_numpy(images)).numpy(), labels)


def _reestimate_batchnorm(model, images):
    """Recompute every BatchNorm's running mean / var on ``images`` (one forward pass, no gradient step).

    Factorizing a conv changes the statistics of what reaches the BatchNorm after it; on this 6-epoch digits
    model ratio:0.75 alone drops top-1 to about 50 %, with so many near-ties that any top-1 comparison is
    noise. Fresh statistics bring it back near the original without fine-tuning.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
    model.train()
    with torch.inference_mode():
        for i in range(0, len(images), 128):
            model(torch.from_numpy(images[i:i + 128]))
    return model.eval()


@pytest.fixture(scope="module")
def fp32(baseline, digits_test, tmp_path_factory):
    """{"original" | "compressed": {"path", "logits", "top1", "ms"}} of the float32 ONNX exports.

    "compressed" also holds ``raw_top1``, its torch top-1 before the BatchNorm statistics were re-estimated.
    """
    base, metrics = baseline
    images, labels = digits_test
    out = tmp_path_factory.mktemp("precision")
    dense = tdexport.load(base)
    with one_thread():
        compressed = tdexport.compress(dense, format="tucker", rank="ratio:0.75", input_shape=SHAPE,
                                       model_name="resnet20", num_classes=10).model
        raw_top1 = _torch_top1(compressed, images, labels)
        train = load_data("digits", augment=False).train.tensors[0].numpy()
        _reestimate_batchnorm(compressed, train)
    models = {}
    for name, module in (("original", dense), ("compressed", compressed)):
        path = out / f"{name}.onnx"
        export_onnx(module, path, input_shape=SHAPE, opset=18)
        logits, ms = _run(path, images)
        models[name] = {"path": path, "logits": logits, "top1": _top1(logits, labels), "ms": ms}
        print(f"\n[precision] {name} fp32: top-1 {models[name]['top1']:.2f}%  ORT CPU {ms:.2f} ms/batch{TIMING_BATCH}")
    models["compressed"]["raw_top1"] = raw_top1
    print(f"[precision] compressed before BatchNorm re-estimation: top-1 {raw_top1:.2f}%; baseline metrics.json "
          f"top-1 {metrics['final_test_top1']:.2f}%")
    return models


@pytest.fixture(scope="module")
def int8_trt(fp32, tmp_path_factory):
    """{"original" | "compressed": PrecisionResult} of int8 (target trt) conversions."""
    out = tmp_path_factory.mktemp("int8")
    return {name: convert(m["path"], out / f"{name}.int8-trt.onnx", "int8", int8_target="trt", progress=False,
                          calibration=calibration_batches("digits", CALIBRATION, input_shape=SHAPE, batch=64))
            for name, m in fp32.items()}


# ------------------------------------------------------------------------------------------- fp32 / fp16


@pytest.mark.slow
def test_fp32_exports_are_accurate_and_fp32_is_a_checked_copy(fp32, baseline, tmp_path):
    _, metrics = baseline
    # ONNX Runtime's float32 logits of the original give the accuracy training reported (±1 image of 360).
    assert abs(fp32["original"]["top1"] - metrics["final_test_top1"]) <= 100 / 360 + 1e-9
    assert fp32["original"]["top1"] >= 90.0
    # ratio:0.75 keeps three quarters of every eligible layer's rank; with re-estimated BatchNorm statistics
    # (no fine-tuning) the compressed model stays close to the original, and well above what it was before.
    assert fp32["compressed"]["top1"] >= fp32["original"]["top1"] - 3.0
    assert fp32["compressed"]["top1"] > fp32["compressed"]["raw_top1"]
    src = fp32["original"]["path"]
    result = convert(src, tmp_path / "copy.onnx", "fp32")
    assert (tmp_path / "copy.onnx").read_bytes() == src.read_bytes()
    assert (result.precision, result.int8_target, result.quantize_nodes, result.cast_nodes) == ("fp32", None, 0, 0)
    assert result.size_bytes == src.stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("name", ["original", "compressed"])
def test_fp16_agrees_with_fp32_and_keeps_float32_io(fp32, digits_test, tmp_path, name):
    images, labels = digits_test
    ref = fp32[name]
    result = convert(ref["path"], tmp_path / "fp16.onnx", "fp16")
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    assert (result.quantize_nodes, result.dequantize_nodes) == (0, 0) and result.cast_nodes >= 2

    # float32 input and output, named as the contract says, on the file and in an ONNX Runtime session.
    assert [(v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)] == [
        ("input", TensorProto.FLOAT), ("logits", TensorProto.FLOAT)]
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("input", "tensor(float)")]
    assert [(o.name, o.type) for o in session.get_outputs()] == [("logits", "tensor(float)")]
    # The convolutions really are float16 (their weights), and a kept-float32 op is fed by a Cast to float.
    producer = {out: n for n in model.graph.node for out in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(_initializer(model, n.input[1]).data_type == TensorProto.FLOAT16 for n in convs)
    kept = [n for n in model.graph.node if n.op_type in FP16_KEEP_FP32]
    assert kept, "the ResNet's global average pool (or mean) should stay float32"
    for node in kept:
        cast = producer[node.input[0]]
        assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT

    logits, ms = _run(result.path, images)
    assert logits.dtype == np.float32
    agree = agreement(ref["logits"], logits)
    top1 = _top1(logits, labels)
    print(f"\n[precision] {name} fp16: top-1 {top1:.2f}% (fp32 {ref['top1']:.2f}%)  agreement {agree}  "
          f"casts {result.cast_nodes}/{result.nodes} nodes  {result.size_bytes} B  ORT CPU {ms:.2f} ms/batch"
          f"{TIMING_BATCH} (fp32 {ref['ms']:.2f})  convert {result.seconds:.2f} s")
    assert agree["top1_agreement"] >= 0.99
    assert agree["cosine"] >= 0.999
    assert abs(top1 - ref["top1"]) <= 1.0
    assert result.size_bytes < 0.6 * ref["path"].stat().st_size  # weights stored in half the bytes


# ------------------------------------------------------------------------------------------- int8


@pytest.mark.slow
@pytest.mark.parametrize("name", ["original", "compressed"])
def test_int8_trt_keeps_top1_and_follows_tensorrt_rules(fp32, int8_trt, digits_test, name):
    images, labels = digits_test
    ref, result = fp32[name], int8_trt[name]
    model = onnx.load(str(result.path))
    assert check_trt_qdq(model) == []
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    # One weight DQ per weighted op, and one dedicated activation Q/DQ pair per weighted op input.
    assert result.quantize_nodes == len(weighted) and result.dequantize_nodes == 2 * len(weighted)
    inits = {t.name: t for t in model.graph.initializer}
    for node in weighted:
        assert inits[[n for n in model.graph.node if n.output[0] == node.input[1]][0].input[0]].data_type == \
            TensorProto.INT8
        if len(node.input) > 2:
            assert inits[node.input[2]].data_type == TensorProto.FLOAT  # biases stay float for TensorRT
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero = inits[node.input[2]]
            assert zero.data_type == TensorProto.INT8 and not numpy_helper.to_array(zero).any()
    # Q/DQ only where TensorRT fuses them: every activation Q -> DQ pair feeds exactly one weighted op (a Conv
    # output is quantized only when the next op is itself a Conv, as inside a factor chain). Float ops reading
    # the same block input (the residual Add, or the Slice of a downsampling shortcut) read the DQ output.
    consumers = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    for q in quantize:
        (dq,) = consumers[q.output[0]]
        ops = [c.op_type for c in consumers[dq.output[0]]]
        assert sum(op in ("Conv", "Gemm") for op in ops) == 1 and set(ops) <= {"Conv", "Gemm", "Add", "Slice"}, ops

    logits, ms = _run(result.path, images)
    agree = agreement(ref["logits"], logits)
    top1 = _top1(logits, labels)
    print(f"\n[precision] {name} int8-trt: top-1 {top1:.2f}% (fp32 {ref['top1']:.2f}%)  agreement {agree}  "
          f"Q {result.quantize_nodes} DQ {result.dequantize_nodes} of {result.nodes} nodes  {result.size_bytes} B  "
          f"ORT CPU {ms:.2f} ms/batch{TIMING_BATCH} (fp32 {ref['ms']:.2f})  convert {result.seconds:.2f} s")
    assert abs(top1 - ref["top1"]) <= 1.0
    assert agree["top1_agreement"] >= 0.97
    assert result.size_bytes < 0.4 * ref["path"].stat().st_size  # int8 weights


@pytest.mark.slow
def test_int8_cpu_uses_uint8_activations_and_runs(fp32, digits_test, tmp_path):
    images, labels = digits_test
    ref = fp32["original"]
    result = convert(ref["path"], tmp_path / "cpu.onnx", "int8", int8_target="cpu", progress=False,
                     calibration=calibration_batches("digits", CALIBRATION, input_shape=SHAPE, batch=64))
    assert result.int8_target == "cpu"
    model = onnx.load(str(result.path))
    inits = {t.name: t for t in model.graph.initializer}
    activation_zero_points = [inits[n.input[2]] for n in model.graph.node
                              if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert activation_zero_points and {z.data_type for z in activation_zero_points} == {TensorProto.UINT8}
    assert any(numpy_helper.to_array(z).item() != 0 for z in activation_zero_points)  # asymmetric
    assert any(inits[n.input[0]].data_type == TensorProto.INT32 for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits)  # int32 biases for ORT's kernels
    problems = check_trt_qdq(model)  # what makes this layout unfit for TensorRT
    assert any("uint8" in p for p in problems) and any("int32" in p for p in problems)

    logits, ms = _run(result.path, images)
    agree = agreement(ref["logits"], logits)
    top1 = _top1(logits, labels)
    print(f"\n[precision] original int8-cpu: top-1 {top1:.2f}% (fp32 {ref['top1']:.2f}%)  agreement {agree}  "
          f"Q {result.quantize_nodes} DQ {result.dequantize_nodes} of {result.nodes} nodes  "
          f"ORT CPU {ms:.2f} ms/batch{TIMING_BATCH}")
    assert abs(top1 - ref["top1"]) <= 2.0


@pytest.mark.slow
def test_fixed_batch_model_gets_calibration_regrouped(baseline, tmp_path):
    base, _ = baseline
    src = tmp_path / "b8.onnx"
    export_onnx(tdexport.load(base), src, input_shape=SHAPE, opset=18, batch=8)
    # 20 images in batches of 6 reach the quantizer as 3 batches of 8 (the last filled with its own images).
    result = convert(src, tmp_path / "b8.int8.onnx", "int8", progress=False,
                     calibration=calibration_batches("digits", 20, input_shape=SHAPE, batch=6))
    assert check_trt_qdq(onnx.load(str(result.path))) == []
    with OrtRunner(result.path) as runner:
        assert runner.fixed_batch == 8 and runner.infer(np.zeros((8, *SHAPE), np.float32)).shape == (8, 10)


# ------------------------------------------------------------------------------------------- TensorRT rules


def _zero_point_of_first(model, op_type, activation=True):
    inits = {t.name for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == op_type and (n.input[0] in inits) != activation)
    return node, _initializer(model, node.input[2])


@pytest.mark.slow
def test_check_trt_qdq_reports_hand_broken_graphs(int8_trt):
    good = onnx.load(str(int8_trt["original"].path))
    assert check_trt_qdq(good) == []

    broken = onnx.ModelProto()
    broken.CopyFrom(good)
    node, zero = _zero_point_of_first(broken, "QuantizeLinear")
    zero.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zero.name))
    problems = check_trt_qdq(broken)
    assert any(node.name in p and "zero point [3]" in p for p in problems), problems

    broken.CopyFrom(good)
    conv = next(n for n in broken.graph.node if n.op_type == "Conv")
    broken.graph.initializer.append(numpy_helper.from_array(np.zeros((16, 3, 3, 3), np.float32), "plain_weight"))
    conv.input[1] = "plain_weight"
    problems = check_trt_qdq(broken)
    assert problems == [f"Conv '{conv.name}': weight 'plain_weight' comes from an initializer, not a "
                        "DequantizeLinear; TensorRT would run this op in float"]

    broken.CopyFrom(good)
    dq = next(n for n in broken.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized"))
    scale = _initializer(broken, dq.input[1])
    values = numpy_helper.to_array(scale).copy()
    values[0] = -values[0]
    scale.CopyFrom(numpy_helper.from_array(values, scale.name))
    next(a for a in dq.attribute if a.name == "axis").i = 1
    problems = check_trt_qdq(broken)
    assert any(dq.name in p and "positive and finite" in p for p in problems), problems
    assert any(dq.name in p and "axis 1" in p for p in problems), problems

    broken.CopyFrom(good)
    node, zero = _zero_point_of_first(broken, "DequantizeLinear")
    zero.CopyFrom(numpy_helper.from_array(np.array(128, np.uint8), zero.name))
    problems = check_trt_qdq(broken)
    assert any(node.name in p and "uint8" in p for p in problems), problems


# ------------------------------------------------------------------------------------------- calibration data


def test_calibration_batches_are_the_evaluation_images():
    train = load_data("digits", augment=False).train.tensors[0].numpy()
    first = calibration_batches("digits", 70, input_shape=SHAPE, batch=32, seed=None)
    assert len(first) == 3
    arrays = list(first)
    assert [a.shape for a in arrays] == [(32, *SHAPE), (32, *SHAPE), (6, *SHAPE)]
    assert all(a.dtype == np.float32 for a in arrays)
    np.testing.assert_array_equal(np.concatenate(arrays), train[:70])
    a = np.concatenate(list(calibration_batches("digits", 50, input_shape=SHAPE, seed=3)))
    b = np.concatenate(list(calibration_batches("digits", 50, input_shape=SHAPE, seed=3)))
    c = np.concatenate(list(calibration_batches("digits", 50, input_shape=SHAPE, seed=4)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Every sampled image is a distinct image of the train split.
    rows = {r.tobytes() for r in train}
    assert len({r.tobytes() for r in a}) == 50 and all(r.tobytes() in rows for r in a)


@pytest.mark.parametrize("kwargs, match", [
    ({"spec": "digits", "size": 0}, "at least 1"),
    ({"spec": "digits", "size": 5000}, "more than the 1437 images"),
    ({"spec": "mnist", "size": 8}, "malformed --data"),
    ({"spec": "cifar10:/nonexistent/dir", "size": 8}, "not found"),
    ({"spec": "digits", "size": 8, "input_shape": (3, 224, 224)}, r"shape \(3, 32, 32\)"),
    ({"spec": "digits", "size": 8, "batch": 0}, "batch"),
    ({"spec": "digits", "size": 8, "split": "val"}, "split"),
])
def test_calibration_batches_usage_errors(kwargs, match):
    kwargs = {"input_shape": SHAPE, **kwargs}
    with pytest.raises(UsageError, match=match) as err:
        calibration_batches(**kwargs)
    assert err.value.exit_code == 2


# ------------------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A small random float32 conv net exported with the tdexport contract (seconds, no training)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(net, path, input_shape=SHAPE, opset=18)
    return path


def test_usage_errors_write_nothing(tiny_onnx, tmp_path):
    dst = tmp_path / "out.onnx"
    batches = [np.zeros((4, *SHAPE), np.float32)]
    cases = [
        (dict(precision="int4"), "unknown precision"),
        (dict(precision="int8"), "needs calibration"),
        (dict(precision="int8", calibration=batches, int8_target="tpu"), "unknown int8 target"),
        (dict(precision="int8", calibration=[np.zeros((4, 3, 16, 16), np.float32)]), "calibration batch has shape"),
        (dict(precision="int8", calibration=[np.full((4, *SHAPE), np.nan, np.float32)]), "NaN"),
        (dict(precision="int8", calibration=[]), "no images"),
    ]
    for kwargs, match in cases:
        with pytest.raises(UsageError, match=match) as err:
            convert(tiny_onnx, dst, progress=False, **kwargs)
        assert err.value.exit_code == 2
        assert not dst.exists()
    with pytest.raises(UsageError, match="not found"):
        convert(tmp_path / "missing.onnx", dst, "fp16")
    with pytest.raises(UsageError, match="is a directory"):
        convert(tiny_onnx, tmp_path, "fp16")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UsageError, match="not an ONNX model"):
        convert(tmp_path / "junk.onnx", dst, "fp16")
    with pytest.raises(UsageError, match="already"):
        to_fp16(to_fp16(onnx.load(str(tiny_onnx))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]  # no temporary file left behind
    assert PRECISIONS == ("fp32", "fp16", "int8") and INT8_TARGETS == ("trt", "cpu")


def test_tiny_model_converts_to_every_precision(tiny_onnx, tmp_path):
    x = np.random.default_rng(0).standard_normal((16, *SHAPE)).astype(np.float32)
    with OrtRunner(tiny_onnx) as runner:
        ref = runner.infer(x)
    for precision, target in (("fp16", "trt"), ("int8", "trt"), ("int8", "cpu")):
        dst = tmp_path / f"{precision}-{target}.onnx"
        result = convert(tiny_onnx, dst, precision, int8_target=target, progress=False,
                         calibration=[x[:8], x[8:]])
        with OrtRunner(dst) as runner:
            agree = agreement(ref, runner.infer(x))
        assert agree["cosine"] > 0.99, (precision, target, agree)
        if precision == "int8" and target == "trt":
            assert check_trt_qdq(onnx.load(str(dst))) == [] and result.quantize_nodes == 2


def test_agreement_numbers():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    same = agreement(ref, ref.astype(np.float32))
    assert same == {"cosine": 1.0, "min_cosine": 1.0, "top1_agreement": 1.0, "max_abs": 0.0, "rel_l2": 0.0,
                    "samples": 3}
    other = ref.copy()
    other[1] = [0.0, 3.0, 0.0]  # orthogonal row with another argmax
    result = agreement(torch.tensor(ref), other)
    assert result["cosine"] == pytest.approx(2 / 3) and result["min_cosine"] == 0.0
    assert result["top1_agreement"] == pytest.approx(2 / 3) and result["max_abs"] == 3.0
    with pytest.raises(ValueError):
        agreement(ref, ref[:2])


def test_check_trt_qdq_on_matmul_weights():
    from onnx import helper

    def model(axis):
        w = np.arange(12, dtype=np.int8).reshape(4, 3)
        inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.full(3, 0.1, np.float32), "w_s"),
                 numpy_helper.from_array(np.zeros(3, np.int8), "w_z"),
                 numpy_helper.from_array(np.array(0.05, np.float32), "x_s"),
                 numpy_helper.from_array(np.array(0, np.int8), "x_z")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="q_x"),
                 helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="dq_x"),
                 helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], name="dq_w", axis=axis),
                 helper.make_node("MatMul", ["xd", "wd"], ["y"], name="fc"),
                 # activation x activation: not a weighted op, stays float without a violation
                 helper.make_node("Transpose", ["y"], ["yt"], name="t"),
                 helper.make_node("MatMul", ["y", "yt"], ["z"], name="attention")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert check_trt_qdq(model(axis=1)) == []
    assert check_trt_qdq(model(axis=-1)) == []
    assert check_trt_qdq(model(axis=0)) == ["DequantizeLinear 'dq_w': weight of MatMul 'fc' quantized along "
                                            "axis 0, expected the output-channel axis 1"]
