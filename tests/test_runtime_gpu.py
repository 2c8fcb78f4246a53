"""GPU runner paths: device timing, IOBinding, provider options, CUDA torch, GPU environment facts.

The CPU tests run everywhere: the timing interface of CPU runners, the provider option dicts, the keyed
TensorRT cache folder, the profile read from a real ONNX file, devices in `make_runner`, the TF32 switch
and the GPU keys of the environment. The GPU tests need a CUDA device (and the onnxruntime CUDA /
TensorRT provider, or tensorrt) and skip with the reason otherwise; nothing here stands in for a runtime.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import shutil
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tdexport.errors import BackendUnavailable, UsageError
from tdexport.export import export_onnx
from tdexport.runtime import OrtRunner, TorchRunner, TrtRunner, available_backends, make_runner
from tdexport.runtime._base import StreamTimer
from tdexport.runtime._ort import _model_input
from tdexport.runtime._ort_options import (
    _profile_for,
    cuda_provider_options,
    default_trt_cache_base,
    shape_string,
    trt_cache_dir,
    trt_cache_key,
    trt_provider_options,
)
from tdexport.runtime._torch import fp32_math
from tdexport.validate.environment import GPU_KEYS, environment_info, gpu_info
from tdexport.validate.latency import measure_paired
from tdexport.validate.parity import compare_outputs

SHAPE = (3, 16, 16)
NO_GPU = "no CUDA device / onnxruntime CUDA provider not available"


@functools.cache
def _backend_status() -> dict[str, str | None]:
    return available_backends()


def _ort_gpu_reason(backend: str) -> str | None:
    """None when ``backend`` (ort-cuda / ort-trt) really runs here, else why not (checked by loading it)."""
    if not torch.cuda.is_available():
        return f"{NO_GPU}: torch sees no CUDA device"
    status = _backend_status()[backend]
    return None if status is None else f"{NO_GPU}: {status[:200]}"


def _torch_cuda_reason() -> str | None:
    return None if torch.cuda.is_available() else f"{NO_GPU}: torch sees no CUDA device"


def _tensorrt_reason() -> str | None:
    if not torch.cuda.is_available():
        return f"{NO_GPU}: torch sees no CUDA device"
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'tdexport[tensorrt]')"
    return None


ORT_CUDA = _ort_gpu_reason("ort-cuda")
ORT_TRT = _ort_gpu_reason("ort-trt")
TORCH_CUDA = _torch_cuda_reason()
TENSORRT = _tensorrt_reason()


def small_net(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    ).eval()


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-onnx")
    return {
        "dynamic": export_onnx(small_net(8), folder / "dyn.onnx", input_shape=SHAPE, opset=18).path,
        "fixed": export_onnx(small_net(8), folder / "fixed4.onnx", input_shape=SHAPE, opset=18, batch=4).path,
        "wide": export_onnx(small_net(32), folder / "wide.onnx", input_shape=SHAPE, opset=18).path,
    }


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, *SHAPE), dtype=np.float32)


# ------------------------------------------------------------------------------------------ CPU: interface


def test_cpu_runners_time_on_the_host_only(onnx_files, batch):
    runners = [TorchRunner(small_net(), threads=1), OrtRunner(onnx_files["dynamic"], threads=1)]
    for runner in runners:
        assert runner.first_call_ms is None and not runner.device_timing and not runner.setup_on_first_call
        with runner:
            assert not runner.device_timing and runner.first_call_ms is None
            logits, device_ms = runner.infer_timed(batch)
            first = runner.first_call_ms
            assert device_ms is None and logits.shape == (4, 10) and logits.dtype == np.float32
            np.testing.assert_array_equal(logits, runner.infer(batch))
            assert first is not None and first > 0 and runner.first_call_ms == first  # only the first call
        with runner:  # a new load starts a new first call
            assert runner.first_call_ms is None
            runner.infer(batch[:1])
            assert runner.first_call_ms > 0


def test_make_runner_devices(onnx_files):
    assert make_runner("torch", small_net(), device="cuda:0").device == torch.device("cuda", 0)
    assert make_runner("torch", small_net()).device == torch.device("cpu")
    assert make_runner("ort-cuda", onnx_files["dynamic"], device="cuda:1").device_id == 1
    gpu = make_runner("ort-trt", onnx_files["dynamic"])
    assert gpu.device_id == 0 and gpu.setup_on_first_call and not gpu.device_timing
    with pytest.raises(UsageError, match="no device"):
        make_runner("ort-cpu", onnx_files["dynamic"], device="cuda")
    with pytest.raises(UsageError, match="CUDA device"):
        make_runner("ort-cuda", onnx_files["dynamic"], device="cpu")
    with pytest.raises(UsageError):
        OrtRunner(onnx_files["dynamic"], provider="trt", max_batch=0)


@pytest.mark.skipif(TORCH_CUDA is None, reason="a CUDA device is present")
def test_torch_cuda_runner_needs_a_cuda_device():
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        TorchRunner(small_net(), device="cuda").load()


def test_fp32_math_restores_the_tf32_switches():
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        with fp32_math():
            assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
        assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before
    else:
        before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        with fp32_math():
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    with fp32_math(False):  # a no-op: TF32 stays as the process set it
        if conv is not None and hasattr(conv, "fp32_precision"):
            assert conv.fp32_precision == before[0]


# ------------------------------------------------------------------------------------ CPU: provider options


def test_cuda_provider_options():
    assert cuda_provider_options() == {"device_id": "0", "use_tf32": "0"}
    assert cuda_provider_options(device_id=1, stream=140_000_000) == {
        "device_id": "1", "use_tf32": "0", "user_compute_stream": "140000000"}
    with pytest.raises(UsageError, match="default stream"):
        cuda_provider_options(stream=0)
    with pytest.raises(UsageError):
        cuda_provider_options(device_id=-1)


def test_trt_provider_options(tmp_path):
    profile = {"min": [1, 3, 16, 16], "opt": [8, 3, 16, 16], "max": [8, 3, 16, 16]}
    options = trt_provider_options("input", profile, tmp_path / "c", device_id=0, stream=12345)
    assert options == {
        "device_id": "0",
        "trt_profile_min_shapes": "input:1x3x16x16",
        "trt_profile_opt_shapes": "input:8x3x16x16",
        "trt_profile_max_shapes": "input:8x3x16x16",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / "c"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path / "c"),
        "user_compute_stream": "12345",
    }
    assert "user_compute_stream" not in trt_provider_options("input", profile, tmp_path)
    assert all(isinstance(v, str) for v in options.values())  # the Python API takes string values
    assert shape_string("x", (1,)) == "x:1"
    for bad in ({"min": [1, 3], "opt": [8, 3]},  # no max
                {"min": [4, 3], "opt": [2, 3], "max": [8, 3]},  # min > opt
                {"min": [1, 3], "opt": [1, 3], "max": [1, 3, 1]}):  # ranks differ
        with pytest.raises(UsageError):
            trt_provider_options("input", bad, tmp_path)
    with pytest.raises(UsageError):
        shape_string("input", (0, 3))


def test_trt_cache_folder_is_keyed(tmp_path, monkeypatch):
    profile = {"input": {"min": [1, 3, 16, 16], "opt": [8, 3, 16, 16], "max": [8, 3, 16, 16]}}
    key = trt_cache_key("ab" * 32, profile, onnxruntime_version="1.31.1", tensorrt_version="10.9.0")
    assert key == {"onnx_sha256": "ab" * 32, "profile": profile, "onnxruntime_version": "1.31.1",
                   "tensorrt_version": "10.9.0"}
    folder = trt_cache_dir(key, tmp_path)
    assert folder.parent == tmp_path and len(folder.name) == 16 and trt_cache_dir(key, tmp_path) == folder
    assert not folder.exists()  # naming a folder creates nothing
    changes = [dict(key, onnx_sha256="cd" * 32), dict(key, onnxruntime_version="1.32.0"),
               dict(key, tensorrt_version="10.10.0"),
               dict(key, profile={"input": dict(profile["input"], max=[16, 3, 16, 16])})]
    assert len({trt_cache_dir(k, tmp_path) for k in changes} | {folder}) == 5
    # Installed versions are read when not given (onnxruntime-gpu here; tensorrt may be absent).
    assert trt_cache_key("00", profile)["onnxruntime_version"] == ort.__version__
    monkeypatch.setenv("TDEXPORT_CACHE_DIR", str(tmp_path / "cache"))
    assert default_trt_cache_base() == tmp_path / "cache" / "ort-trt"
    assert trt_cache_dir(key).parent == tmp_path / "cache" / "ort-trt"


def test_trt_profile_is_read_from_the_model(onnx_files):
    name, dims = _model_input(onnx_files["dynamic"])
    assert name == "input" and dims == [None, *SHAPE]
    assert _profile_for(dims, 8) == {"min": [1, *SHAPE], "opt": [8, *SHAPE], "max": [8, *SHAPE]}
    fixed = _model_input(onnx_files["fixed"])[1]
    assert fixed == [4, *SHAPE] and _profile_for(fixed, 64) == {k: [4, *SHAPE] for k in ("min", "opt", "max")}
    with pytest.raises(UsageError, match="only the batch"):
        _profile_for([None, 3, None, 16], 8)
    assert _model_input(onnx_files["dynamic"].read_bytes()) == (name, dims)


@pytest.mark.skipif(ORT_TRT is None, reason="the onnxruntime TensorRT provider works here")
def test_ort_trt_that_cannot_run_writes_no_cache(onnx_files, tmp_path):
    runner = OrtRunner(onnx_files["dynamic"], provider="trt", cache_dir=tmp_path / "trt-cache")
    with pytest.raises(BackendUnavailable) as info:
        runner.load()
    assert str(info.value).startswith("ort-trt: ") and "TensorrtExecutionProvider" in str(info.value)
    assert not (tmp_path / "trt-cache").exists() and not runner.loaded and not runner.device_timing
    # The profile and folder it would have used are known, for the error report and the GPU machine.
    assert runner.trt_profile == {"min": [1, *SHAPE], "opt": [64, *SHAPE], "max": [64, *SHAPE]}
    assert runner.trt_cache.parent == tmp_path / "trt-cache"


# ---------------------------------------------------------------------------------------- CPU: environment


def _libcuda_loads() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def test_environment_records_gpu_facts_or_none():
    info = gpu_info()
    assert tuple(info) == GPU_KEYS
    env = environment_info(backends={"ort-cpu": {"device": "cpu", "providers": ["CPUExecutionProvider"]}})
    assert {k: env[k] for k in GPU_KEYS} == info
    assert env["torch_cuda"] == torch.version.cuda and env["device_timing"] == []
    if not torch.cuda.is_available() and shutil.which("nvidia-smi") is None:
        assert env["gpu"] is None and env["gpu_driver"] is None
    if not _libcuda_loads():
        assert env["cuda_driver"] is None
    if torch.cuda.is_available():
        assert env["gpu"] == torch.cuda.get_device_name(torch.cuda.current_device())
    if env["cuda_driver"] is not None:
        major, minor = env["cuda_driver"].split(".")
        assert major.isdigit() and minor.isdigit()
    json.dumps(env)
    used = environment_info(backends={"ort-cuda": {"device": "cuda:0 (GPU)", "timing": "device"},
                                      "ort-cpu": {"device": "cpu"}})
    assert used["device_timing"] == ["ort-cuda"]


# --------------------------------------------------------------------------------------------------- GPU


def _timed_call(runner, x):
    start = time.perf_counter()
    logits, device_ms = runner.infer_timed(x)
    return logits, device_ms, (time.perf_counter() - start) * 1e3


@pytest.mark.skipif(ORT_CUDA is not None, reason=ORT_CUDA or "")
def test_ort_cuda_iobinding_matches_cpu(onnx_files, batch):
    with OrtRunner(onnx_files["dynamic"], provider="cpu", threads=1) as cpu, \
            OrtRunner(onnx_files["dynamic"], provider="cuda") as gpu:
        assert gpu.device_timing and gpu.setup_on_first_call and gpu.providers[0] == "CUDAExecutionProvider"
        options = gpu._session.get_provider_options()["CUDAExecutionProvider"]
        assert options["use_tf32"] == "0" and options["user_compute_stream"] == str(gpu._gpu["stream"].cuda_stream)
        info = gpu.device_info()
        assert info["device"].startswith("cuda:0") and info["timing"] == "device" and info["tf32"] is False
        for x in (batch, batch[:1], batch):  # a new batch size rebinds the input buffer
            logits, device_ms, host_ms = _timed_call(gpu, x)
            expected = cpu.infer(x)
            assert logits.shape == expected.shape and logits.dtype == np.float32
            assert compare_outputs(expected, logits).rel_l2_err <= 1e-5  # TF32 off: fp32 rounding only
            assert 0 < device_ms <= host_ms
        assert gpu.first_call_ms is not None and gpu.first_call_ms > 0


@pytest.mark.skipif(ORT_CUDA is not None, reason=ORT_CUDA or "")
def test_measure_paired_uses_device_time_on_ort_cuda(onnx_files):
    x = np.random.default_rng(1).standard_normal((8, *SHAPE), dtype=np.float32)
    big, small = OrtRunner(onnx_files["wide"], provider="cuda"), OrtRunner(onnx_files["dynamic"], provider="cuda")
    with big, small:
        res = measure_paired(big, small, x, warmup_s=0.1, iterations=20, duration_s=0.2, round_size=5)
    assert res.speedup_basis == "device" and res.device is not None
    assert res.first_call_ms is not None and all(v > 0 for v in res.first_call_ms)
    for dev, host in zip(res.device, (res.original, res.compressed), strict=True):
        assert dev.count == host.count and 0 < dev.p50 <= host.p50
    d = res.to_dict()
    assert d["speedup_basis"] == "device" and d["host_speedup"] == res.host_speedup and "device" in d


@pytest.mark.skipif(ORT_TRT is not None, reason=ORT_TRT or "")
def test_ort_trt_profile_and_engine_cache(onnx_files, batch, tmp_path):
    cache = tmp_path / "trt-cache"
    with OrtRunner(onnx_files["dynamic"], provider="cpu", threads=1) as cpu, \
            OrtRunner(onnx_files["dynamic"], provider="trt", max_batch=8, cache_dir=cache) as gpu:
        assert gpu.providers[0] == "TensorrtExecutionProvider" and gpu.device_timing
        assert gpu.trt_profile == {"min": [1, *SHAPE], "opt": [8, *SHAPE], "max": [8, *SHAPE]}
        options = gpu._session.get_provider_options()["TensorrtExecutionProvider"]
        assert options["trt_profile_min_shapes"] == "input:1x3x16x16"
        assert options["trt_profile_opt_shapes"] == options["trt_profile_max_shapes"] == "input:8x3x16x16"
        assert gpu.trt_cache.parent == cache and options["trt_engine_cache_path"] == str(gpu.trt_cache)
        key = json.loads((gpu.trt_cache / "key.json").read_text())
        assert key["profile"] == {"input": gpu.trt_profile} and key["onnxruntime_version"] == ort.__version__
        for x in (batch, batch[:1]):
            logits, device_ms, host_ms = _timed_call(gpu, x)
            # TensorRT keeps its default TF32 for fp32 layers (the provider has no switch for it).
            parity = compare_outputs(cpu.infer(x), logits)
            assert parity.rel_l2_err < 5e-3 and parity.top1_agreement == 1.0
            assert 0 < device_ms <= host_ms
        with pytest.raises(UsageError, match="outside the TensorRT profile"):
            gpu.infer(np.zeros((16, *SHAPE), np.float32))
        info = gpu.device_info()
        assert info["trt_profile"] == gpu.trt_profile and info["trt_cache"] == str(gpu.trt_cache)
    assert len([p for p in gpu.trt_cache.iterdir() if p.name != "key.json"]) >= 1  # engine / timing cache written


@pytest.mark.skipif(TORCH_CUDA is not None, reason=TORCH_CUDA or "")
def test_torch_cuda_runner_matches_cpu_with_device_time(batch):
    model = small_net(16)
    with TorchRunner(model) as cpu, TorchRunner(model, device="cuda") as gpu:
        assert gpu.device_timing and gpu.setup_on_first_call
        assert gpu.device_info()["timing"] == "device" and gpu.device_info()["tf32"] is False
        for x in (batch, batch[:1]):
            logits, device_ms, host_ms = _timed_call(gpu, x)
            assert compare_outputs(cpu.infer(x), logits).rel_l2_err <= 1e-5
            assert 0 < device_ms <= host_ms
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays where it was


@pytest.mark.skipif(TORCH_CUDA is not None, reason=TORCH_CUDA or "")
def test_stream_timer_measures_enqueued_work():
    stream = torch.cuda.Stream()
    timer = StreamTimer(stream)
    a = torch.randn(1024, 1024, device="cuda")
    with torch.cuda.stream(stream):
        stream.wait_stream(torch.cuda.current_stream())
        timer.start()
        for _ in range(10):
            a = a @ a.T / 1024
        timer.stop()
    assert timer.elapsed_ms() > 0


@pytest.mark.skipif(TENSORRT is not None, reason=TENSORRT or "")
def test_trt_runner_reports_device_time(onnx_files, batch):
    with TorchRunner(small_net(8)) as ref, TrtRunner(onnx_files["dynamic"], max_batch=8) as engine:
        assert engine.device_timing and engine.setup_on_first_call
        logits, device_ms, host_ms = _timed_call(engine, batch)
        assert compare_outputs(ref.infer(batch), logits).rel_l2_err < 1e-5
        assert 0 < device_ms <= host_ms and engine.first_call_ms > 0
