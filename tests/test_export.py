"""ONNX export of dense and compressed zoo models: checker, standard ops, names, dynamic batch, parity gate."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from threads import one_thread
from torch import nn

import tdexport
import tdexport.zoo as zoo
from tdexport.errors import GateFailed, UsageError
from tdexport.export import ExportResult, export_onnx
from tdexport.export.bnfold import fold_batchnorm
from tdexport.runtime import OrtRunner, TorchRunner
from tdexport.validate.parity import ParityResult, compare_outputs

# torch 2.14's dynamo exporter implements opset 18 and up; the default opset 17 has its own test below.
OPSET = 18
MAX_ERR = 1e-4
BIG = {"resnet50", "vgg16_bn"}
MODELS = ["resnet20", "resnet18", "mobilenet_v2", "resnet50", "vgg16_bn"]



def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    # A fresh BatchNorm (mean 0, var 1, γ 1, β 0) is almost the identity, so a wrong fold would go unseen.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model.eval()


def _model(name: str, variant: str) -> nn.Module:
    if variant == "dense":
        return _randomise_bn(tdexport.create_model(name, weights="random"))
    ratio = "ratio:0.25" if name in BIG and variant == "cp" else "ratio:0.5"
    # The classifier is factored too (SVD → two Linear layers), except VGG's two 25088/4096-wide hidden
    # layers, whose spectra alone would take longer than the rest of the test.
    exclude = ["classifier.0", "classifier.3"] if name.startswith("vgg") else []
    with one_thread():
        c = tdexport.compress(name, format=variant, rank=ratio, weights="random", iters=0, cp_iters=5,
                              include_classifier=True, exclude=exclude)
    methods = {e.method for e in c.plan.layers if e.decision == "decomposed"}
    assert "svd" in methods and (name == "mobilenet_v2" or ("tucker2" if variant == "tucker" else variant) in methods)
    return _randomise_bn(c.model)


def _inputs(n: int, shape, seed: int) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _batch_dims(proto: onnx.ModelProto) -> list:
    dims = [v.type.tensor_type.shape.dim[0] for v in (proto.graph.input[0], proto.graph.output[0])]
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]


def _check_file(res: ExportResult, model: nn.Module, shape, *, opset: int) -> onnx.ModelProto:
    """Assertions every exported file must satisfy; returns the loaded proto."""
    assert res.path.is_file()
    assert sorted(p.name for p in res.path.parent.iterdir()) == [res.path.name], "one self-contained file, no temp"
    proto = onnx.load(str(res.path))
    onnx.checker.check_model(proto, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"} and not proto.functions
    ops = Counter(n.op_type for n in proto.graph.node)
    assert res.op_types == tuple(sorted(ops))
    assert "BatchNormalization" not in ops
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert res.opset == opset == next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    # Factor layers stay separate standard nodes: one Conv per nn.Conv2d, one Gemm/MatMul per nn.Linear.
    assert ops["Conv"] == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert ops["Gemm"] + ops["MatMul"] == sum(isinstance(m, nn.Linear) for m in model.modules())
    assert res.parity.rel_l2_err <= MAX_ERR and res.parity.top1_agreement == 1.0
    return proto


def _ort_vs_torch(path, model: nn.Module, x: torch.Tensor) -> ParityResult:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = model.eval()(x).numpy()
    return compare_outputs(ref, session.run(["logits"], {"input": x.numpy()})[0])


# The big models export one factorized variant each: their dense and CP graphs add only size (VGG-16 takes
# about 35 s per export) to structures the small models already cover.
CASES = [
    pytest.param(name, variant, marks=[pytest.mark.slow] if name in BIG else [], id=f"{name}-{variant}")
    for name in MODELS
    for variant in (("tucker",) if name in BIG else ("dense", "tucker", "cp"))
]


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_export_zoo_model(name, variant, tmp_path):
    shape = zoo.model_info(name).input_shape
    model = _model(name, variant)
    res = export_onnx(model, tmp_path / f"{name}-{variant}.onnx", input_shape=shape, opset=OPSET)
    proto = _check_file(res, model, shape, opset=OPSET)
    assert res.dynamic_batch and _batch_dims(proto) == ["batch", "batch"]
    for n in (1, 3):
        parity = _ort_vs_torch(res.path, model, _inputs(n, shape, seed=10 + n))
        assert parity.rel_l2_err <= MAX_ERR, (n, parity)


@pytest.fixture(scope="module")
def r20_tucker() -> nn.Module:
    return _model("resnet20", "tucker")


R20_SHAPE = (3, 32, 32)


def test_default_opset_and_caller_model_untouched(tmp_path):
    model = _randomise_bn(tdexport.create_model("resnet20", weights="random")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    res = export_onnx(model, tmp_path / "r20.onnx", input_shape=R20_SHAPE)
    _check_file(res, model, R20_SHAPE, opset=17)
    assert res.exporter in ("dynamo", "torchscript")
    if res.exporter == "torchscript":  # the fallback says why the recommended exporter was not used
        assert any(note.startswith("dynamo") for note in res.notes)
    assert model.training and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fixed_batch(r20_tucker, tmp_path):
    res = export_onnx(r20_tucker, tmp_path / "fixed.onnx", input_shape=R20_SHAPE, opset=OPSET, batch=4)
    proto = _check_file(res, r20_tucker, R20_SHAPE, opset=OPSET)
    assert not res.dynamic_batch and _batch_dims(proto) == [4, 4]
    assert res.parity.samples == 4
    assert _ort_vs_torch(res.path, r20_tucker, _inputs(4, R20_SHAPE, seed=3)).rel_l2_err <= MAX_ERR
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"input": _inputs(3, R20_SHAPE, seed=3).numpy()})


def test_simplify_off_and_on(r20_tucker, tmp_path):
    plain = export_onnx(r20_tucker, tmp_path / "a" / "plain.onnx", input_shape=R20_SHAPE, opset=OPSET,
                        simplify=False)
    slim = export_onnx(r20_tucker, tmp_path / "b" / "slim.onnx", input_shape=R20_SHAPE, opset=OPSET)
    assert not plain.simplified and slim.simplified
    sizes = [len(_check_file(r, r20_tucker, R20_SHAPE, opset=OPSET).graph.node) for r in (plain, slim)]
    assert sizes[1] <= sizes[0]


def test_custom_parity_inputs_and_single_sample_example(r20_tucker, tmp_path):
    x = _inputs(5, R20_SHAPE, seed=7)
    res = export_onnx(r20_tucker, tmp_path / "m.onnx", input_shape=R20_SHAPE, opset=OPSET, example=x[:1],
                      parity_inputs=x, simplify=False)
    # Five parity samples, plus the first one run alone to prove the batch dimension is really dynamic.
    assert res.parity.samples == 6 and res.parity.rel_l2_err <= MAX_ERR


class _ExportOnlyScaled(nn.Conv2d):
    """A factor conv whose weight is 1.5× too large only in the exported graph: a planted export fault."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * 1.5 if torch.onnx.is_in_onnx_export() else self.weight
        return self._conv_forward(x, w, self.bias)


def test_planted_wrong_factor_weight_fails_gate_and_leaves_no_file(r20_tucker, tmp_path):
    import copy

    model = copy.deepcopy(r20_tucker)
    core = model.layer2[0].conv2[1]  # the Tucker core of a factorized 3×3 conv
    planted = _ExportOnlyScaled(core.in_channels, core.out_channels, core.kernel_size, stride=core.stride,
                                padding=core.padding, bias=False)
    planted.load_state_dict(core.state_dict())
    model.layer2[0].conv2[1] = planted
    out = tmp_path / "bad.onnx"
    with pytest.raises(GateFailed, match="rel_l2=") as info:
        export_onnx(model, out, input_shape=R20_SHAPE, opset=OPSET)
    assert info.value.exit_code == 3
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_an_existing_file(r20_tucker, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(GateFailed):
        export_onnx(r20_tucker, out, input_shape=R20_SHAPE, opset=OPSET, simplify=False, max_parity_err=1e-30)
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_torch_side_perturbation_is_caught_by_the_comparator(r20_tucker, tmp_path):
    res = export_onnx(r20_tucker, tmp_path / "m.onnx", input_shape=R20_SHAPE, opset=OPSET, simplify=False)
    x = _inputs(8, R20_SHAPE, seed=5).numpy()
    import copy

    model = copy.deepcopy(r20_tucker)
    with OrtRunner(res.path) as onnx_runner, TorchRunner(model) as good:
        assert compare_outputs(good.infer(x), onnx_runner.infer(x)).rel_l2_err <= MAX_ERR
        with torch.no_grad():
            model.layer3[1].conv1[0].weight[0] += 0.5  # first factor of a Tucker chain, torch side only
        with TorchRunner(model) as bad:
            parity = compare_outputs(bad.infer(x), onnx_runner.infer(x))
    assert parity.rel_l2_err > MAX_ERR and not parity.passes(MAX_ERR)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_shape": (3, 32)},
        {"input_shape": R20_SHAPE, "batch": 0},
        {"input_shape": R20_SHAPE, "parity_inputs": torch.zeros(2, 3, 16, 16)},
        {"input_shape": R20_SHAPE, "batch": 4, "parity_inputs": torch.zeros(2, 3, 32, 32)},
        {"input_shape": R20_SHAPE, "max_parity_err": 0.0},
    ],
    ids=["shape-rank", "batch-0", "parity-shape", "parity-batch", "zero-limit"],
)
def test_bad_arguments(kwargs, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UsageError) as info:
        export_onnx(model, tmp_path / "m.onnx", **kwargs)
    assert info.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1, bias=False))
        self.bn_a = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(3, 8, 1)
        self.bn_b = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(x)
        return torch.relu(self.bn_a(self.a(x))) + self.bn_b(y) + y  # y is read twice: bn_b must stay


def test_batchnorm_folding_is_exact_and_conservative():
    model = _randomise_bn(_Residual())
    x = _inputs(4, (3, 16, 16), seed=1)
    with torch.no_grad():
        ref = model(x)
    assert fold_batchnorm(model) == 1
    assert isinstance(model.bn_a, nn.Identity) and isinstance(model.bn_b, nn.BatchNorm2d)
    assert model.a[1].bias is not None  # the fold adds the bias a factor conv did not have
    with torch.no_grad():
        assert compare_outputs(ref, model(x)).rel_l2_err < 1e-6


def test_compare_outputs_metrics():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]], dtype=np.float32)
    same = compare_outputs(ref, torch.from_numpy(ref.copy()))
    assert (same.max_abs_err, same.rel_l2_err, same.top1_agreement, same.samples) == (0.0, 0.0, 1.0, 2)
    assert same.cosine == pytest.approx(1.0)
    cand = ref.copy()
    cand[1] = [0.0, 0.0, 3.0]  # second sample now predicts class 2 instead of 0
    res = compare_outputs(ref, cand)
    assert res.max_abs_err == pytest.approx(4.0)
    assert res.rel_l2_err == pytest.approx(np.linalg.norm(cand - ref) / np.linalg.norm(ref))
    assert res.cosine == pytest.approx(-3 / (np.sqrt(10) * 3))
    assert res.top1_agreement == 0.5 and res.samples == 2
    assert res.to_dict()["samples"] == 2 and "rel_l2=" in res.summary()
    assert compare_outputs(ref[0], ref[0]).samples == 1
    nan = cand.copy()
    nan[0, 0] = np.nan
    assert not compare_outputs(ref, nan).passes(1.0)
    assert compare_outputs(np.zeros((1, 3)), np.zeros((1, 3))).passes(0.0)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_outputs(ref, ref[:1])


def test_weights_over_2gib_are_refused_before_any_work(tmp_path):
    # meta tensors have sizes but no storage: 48 × 11.2M float32 weights are 2.04 GiB, never allocated
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 11_200_000, device="meta"))
    with pytest.raises(UsageError, match=r"2\.0\d GiB in float32, above the 2 GiB"):
        export_onnx(model, tmp_path / "big.onnx", input_shape=(3, 4, 4))
    assert not (tmp_path / "big.onnx").exists()


def test_proto_size_check_counts_an_unserialisable_message_as_too_large():
    from tdexport.export.graph import proto_too_large

    class Unserialisable:
        def ByteSize(self):  # what protobuf's upb backend does for a message of 2 GiB or more
            raise RuntimeError("Failed to serialize proto")

    assert proto_too_large(Unserialisable())
    small = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    assert not proto_too_large(small)


def test_batchnorm_is_not_folded_into_a_conv_subclass():
    class StdConv(nn.Conv2d):  # uses a standardised weight: a folded BN scale would be normalised away
        def forward(self, x):
            w = self.weight
            w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
            return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)

    model = _randomise_bn(nn.Sequential(StdConv(3, 8, 3, padding=1), nn.BatchNorm2d(8)))
    x = _inputs(2, (3, 8, 8), seed=3)
    with torch.no_grad():
        ref = model(x)
    assert fold_batchnorm(model) == 0
    with torch.no_grad():
        assert torch.equal(model(x), ref)
