"""Runners: torch vs ONNX Runtime agreement, backend errors with their reasons, lifecycle, TensorRT integration."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import tdexport
from tdexport.errors import BackendUnavailable, UsageError
from tdexport.export import build_engine, export_onnx
from tdexport.runtime import BACKENDS, OrtRunner, TorchRunner, TrtRunner, available_backends, make_runner
from tdexport.validate.parity import compare_outputs, compare_runners
from tdexport.validate.report import environment_info

SHAPE = (3, 32, 32)
PROVIDERS = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    m = tdexport.create_model("resnet20", weights="random").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is exercised
        for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
            bn.running_mean.copy_(0.2 * torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=g))
    return m


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "r20.onnx", input_shape=SHAPE, opset=18).path


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, *SHAPE), dtype=np.float32)


def _provider_really_works(provider: str, path) -> bool:
    """Ask onnxruntime directly: listed providers can still fail to load (no GPU / libraries) and fall back."""
    if provider not in ort.get_available_providers():
        return False
    try:
        session = ort.InferenceSession(str(path), providers=[provider, "CPUExecutionProvider"])
    except Exception:
        return False
    return provider in session.get_providers()


def _tensorrt_missing() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'tdexport[tensorrt]')"
    if not torch.cuda.is_available():
        return "no CUDA device: TensorRT needs an NVIDIA GPU"
    return None


def test_torch_and_ort_cpu_agree(model, onnx_path, batch):
    with TorchRunner(model, threads=1) as ref, OrtRunner(onnx_path, provider="cpu", threads=1) as cand:
        assert (ref.name, cand.name, ref.threads, cand.threads) == ("torch", "ort-cpu", 1, 1)
        assert cand.providers[0] == "CPUExecutionProvider"
        a, b = ref.infer(batch), cand.infer(batch)
        single = cand.infer(batch[:1])
    assert a.shape == b.shape == (4, 10) and a.dtype == b.dtype == np.float32
    parity = compare_outputs(a, b)
    assert parity.rel_l2_err < 1e-4 and parity.top1_agreement == 1.0
    assert compare_outputs(a[:1], single).rel_l2_err < 1e-4


def test_make_runner_dispatch(model, onnx_path):
    assert isinstance(make_runner("torch", model), TorchRunner)
    runner = make_runner("ort-cpu", onnx_path, threads=2)
    assert isinstance(runner, OrtRunner) and runner.threads == 2 and not runner.loaded
    assert isinstance(make_runner("trt", onnx_path), TrtRunner)
    with pytest.raises(UsageError) as info:
        make_runner("tvm", onnx_path)
    assert info.value.exit_code == 2 and all(name in str(info.value) for name in BACKENDS)
    with pytest.raises(UsageError, match="nn.Module"):
        make_runner("torch", onnx_path)
    with pytest.raises(UsageError, match="model file"):
        make_runner("ort-cpu", model)


@pytest.mark.parametrize("backend", ["ort-cuda", "ort-trt"])
def test_ort_gpu_providers(backend, onnx_path, batch):
    provider = PROVIDERS[backend]
    runner = make_runner(backend, onnx_path)
    if _provider_really_works(provider, onnx_path):
        with runner:
            assert provider in runner.providers and runner.infer(batch).shape == (4, 10)
        return
    with pytest.raises(BackendUnavailable) as info:
        runner.load()
    message = str(info.value)
    assert info.value.exit_code == 4 and message.startswith(f"{backend}: ") and provider in message
    if provider not in ort.get_available_providers():
        assert "available:" in message
    else:  # listed by onnxruntime-gpu but unusable: the message says it fell back and what is needed
        assert "could not load" in message and "CPUExecutionProvider" in message
    assert not runner.loaded


@pytest.mark.skipif(_tensorrt_missing() is None, reason="tensorrt and a GPU are present")
def test_trt_unavailable_names_the_missing_piece(onnx_path, tmp_path):
    with pytest.raises(BackendUnavailable) as info:
        make_runner("trt", onnx_path).load()
    assert info.value.exit_code == 4
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt" in str(info.value) and "tdexport[tensorrt]" in str(info.value)
    else:
        assert "CUDA" in str(info.value)
    with pytest.raises(BackendUnavailable):
        build_engine(onnx_path, tmp_path / "m.engine")
    assert list(tmp_path.iterdir()) == []


def test_build_engine_rejects_a_bad_profile(onnx_path, tmp_path):
    with pytest.raises(UsageError, match="min ≤ opt ≤ max"):
        build_engine(onnx_path, tmp_path / "m.engine", min_batch=8, opt_batch=4, max_batch=16)


def test_available_backends(onnx_path):
    status = available_backends()
    assert tuple(status) == BACKENDS
    assert status["torch"] is None and status["ort-cpu"] is None
    for backend, provider in PROVIDERS.items():
        assert (status[backend] is None) == _provider_really_works(provider, onnx_path), status[backend]
        if status[backend] is not None:
            assert provider in status[backend]
    assert (status["trt"] is None) == (_tensorrt_missing() is None)


def test_context_manager_closes_and_restores_threads(model, onnx_path, batch):
    threads = torch.get_num_threads()
    with TorchRunner(model, threads=1) as runner:
        assert runner.loaded and torch.get_num_threads() == 1
    assert not runner.loaded and torch.get_num_threads() == threads
    with pytest.raises(RuntimeError, match="not loaded"):
        runner.infer(batch)
    with OrtRunner(onnx_path) as ort_runner:
        assert ort_runner.loaded
    assert not ort_runner.loaded and ort_runner.providers == []
    with pytest.raises(RuntimeError, match="not loaded"):
        ort_runner.infer(batch)
    ort_runner.close()  # closing twice is harmless


def test_fixed_batch_is_read_from_the_loaded_graph(model, onnx_path, tmp_path, batch):
    fixed = export_onnx(model, tmp_path / "fixed.onnx", input_shape=SHAPE, opset=18, batch=4).path
    runner = OrtRunner(fixed, threads=1)
    assert runner.fixed_batch is None  # not known before the graph is loaded
    with runner, OrtRunner(onnx_path) as dynamic, TorchRunner(model) as eager:
        assert runner.fixed_batch == 4
        assert dynamic.fixed_batch is None and eager.fixed_batch is None
        assert runner.infer(batch).shape == (4, 10)
        assert runner.device_info()["fixed_batch"] == 4


def test_device_info_reports_what_the_loaded_runner_uses(model, onnx_path):
    with OrtRunner(onnx_path, provider="cpu", threads=1) as ort_runner, TorchRunner(model, threads=1) as eager:
        info = ort_runner.device_info()
        assert info == {"device": "cpu", "providers": ort_runner.providers, "threads": 1, "fixed_batch": None}
        assert info["providers"] == ["CPUExecutionProvider"]  # the session's, not what onnxruntime lists
        assert eager.device_info() == {"device": "cpu", "threads": torch.get_num_threads(), "fixed_batch": None}
        assert eager.device_info()["threads"] == 1
    for runner in (ort_runner, eager):
        with pytest.raises(RuntimeError, match="not loaded"):
            runner.device_info()
    trt_runner = TrtRunner(onnx_path)
    assert trt_runner.gpu_name is None and trt_runner.fixed_batch is None


def test_environment_info_records_the_loaded_runners(model, onnx_path):
    with OrtRunner(onnx_path, threads=1) as ort_runner, TorchRunner(model) as eager:
        env = environment_info(backends={r.name: r.device_info() for r in (ort_runner, eager)})
    assert env["backends"]["ort-cpu"] == {"device": "cpu", "providers": ["CPUExecutionProvider"], "threads": 1,
                                          "fixed_batch": None}
    assert env["backends"]["torch"]["device"] == "cpu"
    # What was used, not what onnxruntime-gpu lists (it lists CUDA/TensorRT providers it cannot load here).
    assert env["providers"] == ["CPUExecutionProvider"] and env["device"] == "cpu"
    assert set(env["providers"]) <= set(env["onnxruntime_available_providers"])


def test_compare_runners_on_a_fixed_batch_graph(model, tmp_path):
    fixed = export_onnx(model, tmp_path / "fixed3.onnx", input_shape=SHAPE, opset=18, batch=3).path
    x = np.random.default_rng(1).standard_normal((7, *SHAPE), dtype=np.float32)  # 3 + 3 + 1 (padded)
    with TorchRunner(model) as ref, OrtRunner(fixed) as cand:
        parity = compare_runners(ref, cand, x)
        same = compare_runners(ref, ref, torch.from_numpy(x))
    assert parity.samples == 7 and parity.rel_l2_err < 1e-4 and parity.top1_agreement == 1.0
    assert (same.max_abs_err, same.rel_l2_err, same.top1_agreement) == (0.0, 0.0, 1.0)
    assert same.cosine == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="N, C, H, W"):
        compare_runners(ref, ref, x[0])


def test_torch_runner_leaves_the_callers_model_alone(model, batch):
    model.train()
    try:
        with TorchRunner(model) as runner:
            out = runner.infer(batch)
        assert model.training
    finally:
        model.eval()
    with torch.inference_mode():
        assert compare_outputs(model(torch.from_numpy(batch)), out).rel_l2_err < 1e-6


def test_runner_input_errors(onnx_path, tmp_path):
    with pytest.raises(UsageError, match="not found"):
        OrtRunner(tmp_path / "missing.onnx").load()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(UsageError, match="cannot load"):
        OrtRunner(bad).load()
    with pytest.raises(UsageError, match="provider"):
        OrtRunner(onnx_path, provider="rocm")
    with pytest.raises(UsageError, match="threads"):
        OrtRunner(onnx_path, threads=0)


@pytest.mark.skipif(_tensorrt_missing() is not None, reason=_tensorrt_missing() or "")
def test_tensorrt_engine_matches_torch(model, onnx_path, tmp_path, batch):
    engine = build_engine(onnx_path, tmp_path / "r20.engine", min_batch=1, opt_batch=4, max_batch=8)
    sidecar = json.loads((tmp_path / "r20.engine.json").read_text())
    assert sidecar["profile"]["input"] == {"min": [1, *SHAPE], "opt": [4, *SHAPE], "max": [8, *SHAPE]}
    assert len(sidecar["onnx_sha256"]) == 64 and sidecar["tensorrt_version"]
    with TorchRunner(model) as ref, TrtRunner(engine) as trt_runner, TrtRunner(onnx_path, max_batch=8) as built:
        expected = ref.infer(batch)
        # TF32 is cleared at build time, so an fp32 engine must match fp32 torch to fp32 rounding.
        for runner in (trt_runner, built):
            assert runner.gpu_name and runner.device_info()["device"].startswith("cuda:")
            assert runner.fixed_batch is None  # profiles 1..8 and 1..8: the batch size may vary
            assert compare_outputs(expected, runner.infer(batch)).rel_l2_err < 1e-5
            assert compare_outputs(expected[:1], runner.infer(batch[:1])).rel_l2_err < 1e-5
