"""TensorRT engine building (tdexport.engine) and the build-engine command.

TensorRT cannot be installed on the CPU-only CI machines, so the builder logic is tested against a stand-in
``tensorrt`` module that records the API calls it receives (the calls and enum values follow the TensorRT
10 / 11 Python API reference). The real-GPU tests at the end skip with the reason where tensorrt or a CUDA
device is missing.
"""

from __future__ import annotations

import enum
import hashlib
import importlib.util
import json
import subprocess
import sys
import types
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tdexport import engine
from tdexport.engine import _env
from tdexport.errors import BackendUnavailable, UsageError

FAKE_GPU = _env.GpuInfo(index=0, name="Fake GPU 9000", compute_capability="8.9")


# ----------------------------------------------------------------------------------------------- stand-in tensorrt


def _fake_tensorrt(version: str, *, parse_ok: bool = True, parse_errors: tuple[str, ...] = (),
                   engine_bytes: bytes | None = b"SERIALIZED-ENGINE", build_logs: tuple[str, ...] = (),
                   builder_error: Exception | None = None, runtime_error: Exception | None = None,
                   cache_mismatch: bool = False) -> tuple[types.ModuleType, SimpleNamespace]:
    """A ``tensorrt`` module with the builder API surface tdexport.engine uses; ``state`` records the calls."""
    state = SimpleNamespace(builders=0, networks=[], parsed=[], configs=[], profiles=[], built=0, runtimes=0)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self):
            pass

        def log(self, severity, msg):
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger
    trt.Logger = type("Logger", (ILogger,), {"WARNING": Severity.WARNING, "ERROR": Severity.ERROR})
    # TensorRT 10 has EXPLICIT_BATCH = 0 (deprecated) and STRONGLY_TYPED = 1; TensorRT 11 dropped EXPLICIT_BATCH.
    members = {"STRONGLY_TYPED": 0} if version.startswith("11.") else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", members)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"DEBUG": 2, "TF32": 6})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"|timings"

    class Config:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # TF32 is on by default, as in TensorRT 10 and 11
            self.pool_limits, self.profiles, self.cache_blobs, self.set_caches = {}, [], [], []
            self.builder_optimization_level = 3
            self._cache = None

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def set_memory_pool_limit(self, pool, size):
            self.pool_limits[pool] = size

        def create_timing_cache(self, blob):
            self.cache_blobs.append(bytes(blob))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.set_caches.append((cache.blob, ignore_mismatch))
            if cache_mismatch and cache.blob and not ignore_mismatch:
                return False
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Profile:
        def set_shape(self, name, low, opt, high):
            state.profiles.append((name, tuple(low), tuple(opt), tuple(high)))

    class Network:
        num_inputs = 1

        def get_input(self, index):
            return SimpleNamespace(name="input")

    class Builder:
        def __init__(self, logger):
            if builder_error is not None:
                raise builder_error
            assert isinstance(logger, trt.ILogger)
            state.builders += 1
            self.logger = logger

        def create_network(self, flags):
            state.networks.append(flags)
            return Network()

        def create_builder_config(self):
            config = Config()
            state.configs.append(config)
            return config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            state.built += 1
            for message in build_logs:
                self.logger.log(Severity.ERROR, message)
            return engine_bytes

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = len(parse_errors)

        def parse_from_file(self, path):
            state.parsed.append(path)
            return parse_ok

        def get_error(self, index):
            return _ParserError(parse_errors[index])

    class Runtime:
        def __init__(self, logger):
            if runtime_error is not None:
                raise runtime_error
            state.runtimes += 1

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt, state


class _ParserError:
    def __init__(self, text):
        self.text = text

    def __str__(self):
        return f"In node 0 (parseGraph): INVALID_NODE: {self.text}"


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a stand-in tensorrt (``fake_trt(version, **behaviour) -> state``) and a stand-in CUDA device."""

    def install(version: str = "10.16.0", **behaviour):
        module, state = _fake_tensorrt(version, **behaviour)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        monkeypatch.setattr(_env, "cuda_device", lambda: FAKE_GPU)
        state.module = module
        return state

    return install


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make ``import tensorrt`` fail, as on a machine without it."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


# ----------------------------------------------------------------------------------------------- small ONNX models


def _conv_onnx(path: Path, batch: int | str = "N", *, cast_fp16: bool = False, fp16_weights: bool = False,
               quantize: bool = False) -> Path:
    """A one-conv model, input ``input`` (batch, 3, 8, 8) -> ``logits`` (batch, 4, 8, 8), opset 17."""
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    nodes, src = [], "input"
    if quantize:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        src = "dq"
    if cast_fp16:
        nodes += [helper.make_node("Cast", [src], ["half"], to=TensorProto.FLOAT16),
                  helper.make_node("Cast", ["half"], ["back"], to=TensorProto.FLOAT)]
        src = "back"
    if fp16_weights:
        inits += [numpy_helper.from_array(np.ones(4, np.float16), "b16")]
        nodes += [helper.make_node("Cast", ["b16"], ["b"], to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("Conv", [src, "w", *(["b"] if fp16_weights else [])], ["logits"],
                                  pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def dyn_onnx(tmp_path):
    return _conv_onnx(tmp_path / "dyn.onnx")


@pytest.fixture
def static_onnx(tmp_path):
    return _conv_onnx(tmp_path / "static4.onnx", batch=4)


# ----------------------------------------------------------------------------------------------- builder (stand-in)


@pytest.mark.parametrize(("version", "flags"), [("10.16.0", 2), ("10.0.1.6", 2), ("11.1.0", 0)])
def test_network_is_strongly_typed_for_the_running_major(fake_trt, dyn_onnx, version, flags):
    state = fake_trt(version)
    data = engine.build_serialized(dyn_onnx, min_batch=1, opt_batch=4, max_batch=8)
    assert data == b"SERIALIZED-ENGINE"
    assert state.networks == [flags] and state.builders == 1 and state.built == 1
    assert state.parsed == [str(dyn_onnx)]
    assert state.profiles == [("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))]


def test_tf32_is_cleared_unless_requested(fake_trt, dyn_onnx):
    state = fake_trt()
    engine.build_serialized(dyn_onnx)
    engine.build_serialized(dyn_onnx, tf32=True)
    tf32 = state.module.BuilderFlag.TF32
    assert tf32 not in state.configs[0].flags
    assert tf32 in state.configs[1].flags


def test_builder_settings_reach_the_config(fake_trt, dyn_onnx):
    state = fake_trt()
    engine.build_serialized(dyn_onnx, workspace_gib=1.5, opt_level=5)
    engine.build_serialized(dyn_onnx)
    first, second = state.configs
    assert first.pool_limits == {state.module.MemoryPoolType.WORKSPACE: 1610612736}  # 1.5 * 2**30
    assert first.builder_optimization_level == 5 and second.builder_optimization_level == 3  # untouched
    assert second.pool_limits[state.module.MemoryPoolType.WORKSPACE] == 4 << 30
    assert first.cache_blobs == [] and first.set_caches == []  # no timing cache file, no cache calls
    for bad in ({"opt_level": 6}, {"workspace_gib": 0}, {"workspace_gib": float("nan")}):
        with pytest.raises(UsageError):
            engine.build_serialized(dyn_onnx, **bad)
    assert state.builders == 2  # the bad settings never reached TensorRT


def test_timing_cache_is_loaded_and_written_back(fake_trt, dyn_onnx, tmp_path):
    state = fake_trt()
    cache = tmp_path / "cache" / "trt.cache"
    engine.build_serialized(dyn_onnx, timing_cache=cache)
    assert cache.read_bytes() == b"|timings"
    engine.build_serialized(dyn_onnx, timing_cache=cache)
    second = state.configs[1]
    assert second.cache_blobs == [b"|timings"] and second.set_caches == [(b"|timings", False)]
    assert cache.read_bytes() == b"|timings|timings"
    assert [p.name for p in cache.parent.iterdir()] == ["trt.cache"]  # no temporary file left behind


def test_a_mismatched_timing_cache_is_replaced(fake_trt, dyn_onnx, tmp_path, caplog):
    state = fake_trt(cache_mismatch=True)
    cache = tmp_path / "old.cache"
    cache.write_bytes(b"from-another-gpu")
    engine.build_serialized(dyn_onnx, timing_cache=cache)
    config = state.configs[0]
    assert config.set_caches == [(b"from-another-gpu", False), (b"", False)]
    assert cache.read_bytes() == b"|timings"
    assert "another TensorRT version or GPU" in caplog.text


def test_build_engine_writes_engine_and_sidecar(fake_trt, dyn_onnx, tmp_path):
    fake_trt("10.16.0")
    out = engine.build_engine(dyn_onnx, tmp_path / "out" / "m.engine", min_batch=1, opt_batch=4, max_batch=8,
                              workspace_gib=2, opt_level=4)
    assert out == tmp_path / "out" / "m.engine" and out.read_bytes() == b"SERIALIZED-ENGINE"
    sidecar = json.loads((tmp_path / "out" / "m.engine.json").read_text())
    assert set(sidecar) == set(engine.SIDECAR_KEYS)
    built_at = datetime.fromisoformat(sidecar.pop("built_at"))
    assert built_at.utcoffset() is not None and built_at.utcoffset().total_seconds() == 0
    assert sidecar == {
        "tensorrt_version": "10.16.0",
        "gpu_name": "Fake GPU 9000",
        "compute_capability": "8.9",
        "precision": "fp32",
        "tf32": False,
        "strongly_typed": True,
        "profile": {"input": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}},
        "onnx_path": str(dyn_onnx.resolve()),
        "onnx_sha256": hashlib.sha256(dyn_onnx.read_bytes()).hexdigest(),
        "engine_sha256": hashlib.sha256(b"SERIALIZED-ENGINE").hexdigest(),
        "workspace_gib": 2.0,
        "opt_level": 4,
    }


def test_default_profile_of_a_dynamic_model(fake_trt, dyn_onnx):
    state = fake_trt()
    engine.build_serialized(dyn_onnx)
    engine.build_serialized(dyn_onnx, max_batch=4)
    assert [p[1:] for p in state.profiles] == [((1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8)),
                                               ((1, 3, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8))]
    with pytest.raises(UsageError, match="min ≤ opt ≤ max"):
        engine.build_serialized(dyn_onnx, min_batch=8, opt_batch=4, max_batch=16)


def test_static_batch_model_gets_its_own_batch(fake_trt, static_onnx, tmp_path):
    state = fake_trt()
    engine.build_engine(static_onnx, tmp_path / "s.engine")
    engine.build_serialized(static_onnx, min_batch=4, opt_batch=4, max_batch=4)
    assert [p[1:] for p in state.profiles] == [((4, 3, 8, 8),) * 3] * 2
    assert json.loads((tmp_path / "s.engine.json").read_text())["profile"]["input"]["max"] == [4, 3, 8, 8]
    builders = state.builders
    with pytest.raises(UsageError, match="fixed batch of 4") as info:
        engine.build_serialized(static_onnx, min_batch=1, opt_batch=4, max_batch=8)
    assert info.value.exit_code == 2 and "min=1" in str(info.value) and "max=8" in str(info.value)
    assert state.builders == builders  # refused before TensorRT was touched


def test_parse_failure_is_a_usage_error_with_the_parser_message(fake_trt, dyn_onnx, tmp_path):
    fake_trt(parse_ok=False, parse_errors=("Conv: kernel weights must be initializers",))
    with pytest.raises(UsageError) as info:
        engine.build_engine(dyn_onnx, tmp_path / "m.engine")
    assert info.value.exit_code == 2
    assert "cannot parse" in str(info.value) and "kernel weights must be initializers" in str(info.value)
    assert not (tmp_path / "m.engine").exists()


def test_failed_build_is_an_exit_1_error_with_tensorrt_messages(fake_trt, dyn_onnx, tmp_path):
    state = fake_trt(engine_bytes=None, build_logs=("[optimizer] no implementation for layer conv",
                                                    "Could not find any implementation for node conv."))
    with pytest.raises(engine.EngineBuildError) as info:
        engine.build_engine(dyn_onnx, tmp_path / "m.engine", timing_cache=tmp_path / "c.cache")
    message = str(info.value)
    assert info.value.exit_code == 1 and state.built == 1
    assert "no implementation for layer conv" in message and "Could not find any implementation" in message
    assert "10.16.0" in message and "Fake GPU 9000" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dyn.onnx"]  # no engine, sidecar or cache


def test_builder_creation_failure_is_backend_unavailable(fake_trt, dyn_onnx):
    fake_trt(builder_error=TypeError("pybind11::init(): factory function returned nullptr"))
    with pytest.raises(BackendUnavailable) as info:
        engine.build_serialized(dyn_onnx)
    assert info.value.exit_code == 4 and "cannot create a builder" in str(info.value)
    assert "returned nullptr" in str(info.value)


def test_runtime_probe_really_creates_a_runtime(fake_trt, monkeypatch):
    state = fake_trt()
    assert engine.probe() is None and state.runtimes == 1
    fake_trt(runtime_error=RuntimeError("CUDA initialization failure with error: 35"))
    reason = engine.probe()
    assert "cannot create a runtime" in reason and "error: 35" in reason
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert "tdexport[tensorrt]" in engine.probe()


def test_the_logger_is_shared_and_collects_errors(fake_trt):
    state = fake_trt()
    logger = engine.trt_logger()
    assert engine.trt_logger() is logger and isinstance(logger, state.module.ILogger)
    capture = engine.LogCapture(logger)
    severity = state.module.ILogger.Severity
    logger.log(severity.WARNING, "a warning")
    logger.log(severity.ERROR, "first error")
    logger.log(severity.INTERNAL_ERROR, "second error")
    assert capture.errors() == ["first error", "second error"]
    assert capture.text() == "; TensorRT: first error | second error"
    assert engine.LogCapture(logger).errors() == []


def test_engine_is_current_only_when_everything_matches(fake_trt, dyn_onnx, tmp_path, monkeypatch):
    fake_trt("10.16.0")
    out = engine.build_engine(dyn_onnx, tmp_path / "m.engine", min_batch=1, opt_batch=4, max_batch=8)
    args = {"min_batch": 1, "opt_batch": 4, "max_batch": 8}
    assert engine.engine_is_current(out, dyn_onnx, **args, workspace_gib=8, opt_level=1)  # not compared
    assert not engine.engine_is_current(out, dyn_onnx, **args, tf32=True)
    assert not engine.engine_is_current(out, dyn_onnx, min_batch=1, opt_batch=4, max_batch=16)
    assert not engine.engine_is_current(tmp_path / "other.engine", dyn_onnx, **args)
    monkeypatch.setattr(_env, "cuda_device", lambda: _env.GpuInfo(0, "Another GPU", "9.0"))
    assert not engine.engine_is_current(out, dyn_onnx, **args)
    fake_trt("10.16.1")
    assert not engine.engine_is_current(out, dyn_onnx, **args)
    fake_trt("10.16.0")
    assert engine.engine_is_current(out, dyn_onnx, **args)
    out.write_bytes(b"SERIALIZED-ENGINE, truncated")  # bytes no longer the ones the sidecar describes
    assert not engine.engine_is_current(out, dyn_onnx, **args)
    out.write_bytes(b"SERIALIZED-ENGINE")
    _conv_onnx(dyn_onnx, cast_fp16=True)  # the model changed
    assert not engine.engine_is_current(out, dyn_onnx, **args)


def test_run_engines_one_per_model_and_latency_batch_reused_when_current(fake_trt, dyn_onnx, static_onnx,
                                                                          tmp_path):
    fake_trt("11.1.0")
    out = tmp_path / "run"
    out.mkdir()
    messages = []
    engines = engine.run_engines({"original": dyn_onnx, "compressed": static_onnx}, out, [1, 8], max_batch=64,
                                 say=messages.append)
    fixed = engine.inspect_onnx(static_onnx).input_shape[0]
    assert engines == {"original": {1: out / "original.b1.engine", 8: out / "original.engine"},
                       "compressed": {fixed: out / "compressed.engine"}}
    profile = json.loads((out / "original.b1.engine.json").read_text())["profile"]["input"]
    assert (profile["min"][0], profile["opt"][0], profile["max"][0]) == (1, 1, 64)
    profile = json.loads((out / "original.engine.json").read_text())["profile"]["input"]
    assert (profile["min"][0], profile["opt"][0], profile["max"][0]) == (1, 8, 64)
    assert (out / engine.TIMING_CACHE_NAME).is_file()
    assert sum("building" in m for m in messages) == 3
    messages.clear()
    engine.run_engines({"original": dyn_onnx, "compressed": static_onnx}, out, [1, 8], say=messages.append)
    assert sum("reusing" in m for m in messages) == 3 and not any("building" in m for m in messages)


def test_load_engine_bytes_checks_the_tensorrt_version(fake_trt, dyn_onnx, tmp_path):
    fake_trt("10.16.0")
    out = engine.build_engine(dyn_onnx, tmp_path / "m.engine")
    assert engine.load_engine_bytes(out) == b"SERIALIZED-ENGINE"
    fake_trt("11.1.0")
    with pytest.raises(UsageError) as info:
        engine.load_engine_bytes(out)
    assert info.value.exit_code == 2
    assert "built with TensorRT 10.16.0 but this is TensorRT 11.1.0" in str(info.value)
    bare = tmp_path / "trtexec.engine"
    bare.write_bytes(b"no sidecar")
    assert engine.load_engine_bytes(bare) == b"no sidecar"  # nothing to check against
    with pytest.raises(UsageError, match="not found"):
        engine.load_engine_bytes(tmp_path / "missing.engine")


# ----------------------------------------------------------------------------------------------- ONNX inspection


def test_precision_is_read_from_the_onnx_graph(tmp_path):
    cases = {"fp32": {}, "fp16": {"cast_fp16": True}, "int8": {"quantize": True, "cast_fp16": True}}
    for expected, kwargs in cases.items():
        assert engine.inspect_onnx(_conv_onnx(tmp_path / f"{expected}.onnx", **kwargs)).precision == expected
    assert engine.inspect_onnx(_conv_onnx(tmp_path / "w16.onnx", fp16_weights=True)).precision == "fp16"


def test_inspect_onnx_refuses_bad_inputs(tmp_path):
    info = engine.inspect_onnx(_conv_onnx(tmp_path / "dyn.onnx"))
    assert info.input_shape == (None, 3, 8, 8) and info.static_batch is None and info.sample_shape == (3, 8, 8)
    with pytest.raises(UsageError, match="not found"):
        engine.inspect_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model")
    with pytest.raises(UsageError, match="not a readable ONNX model"):
        engine.inspect_onnx(tmp_path / "junk.onnx")
    with pytest.raises(UsageError, match="only the batch dimension"):
        engine.inspect_onnx(_dynamic_hw(_conv_onnx(tmp_path / "hw.onnx")))


def _dynamic_hw(path: Path) -> Path:
    import onnx

    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    onnx.save(model, str(path))
    return path


# ----------------------------------------------------------------------------------------------- CLI


def test_build_engine_help_explains_every_option(cli, capsys):
    assert cli(["build-engine", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--out", "--batch-sizes", "--workspace-gib", "--timing-cache", "--opt-level", "--tf32",
                   "--overwrite"):
        assert option in out
    assert "MIN,OPT,MAX" in out and "sidecar" in out and "TF32" in out


def test_cli_without_tensorrt_exits_4_naming_it(cli, capsys, no_tensorrt, dyn_onnx, tmp_path):
    assert cli(["build-engine", str(dyn_onnx), "--out", str(tmp_path / "m.engine")]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensorrt" in err[0] and "tdexport[tensorrt]" in err[0]
    assert not (tmp_path / "m.engine").exists()


def test_cli_without_cuda_exits_4_naming_it(cli, capsys, monkeypatch, dyn_onnx, tmp_path):
    module, _ = _fake_tensorrt("10.16.0")
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli(["build-engine", str(dyn_onnx), "--out", str(tmp_path / "m.engine")]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA" in err[0]


@pytest.mark.parametrize("case", ["missing", "suffix", "out-suffix", "two-sizes", "not-int", "unordered", "zero",
                                  "static-mismatch", "exists"])
def test_cli_bad_input_exits_2_before_tensorrt(cli, capsys, no_tensorrt, dyn_onnx, static_onnx, tmp_path, case):
    out = tmp_path / "m.engine"
    text = tmp_path / "model.txt"
    text.write_bytes(dyn_onnx.read_bytes())
    args = {
        "missing": [str(tmp_path / "missing.onnx"), "--out", str(out)],
        "suffix": [str(text), "--out", str(out)],
        "out-suffix": [str(dyn_onnx), "--out", str(tmp_path / "m.trt")],
        "two-sizes": [str(dyn_onnx), "--out", str(out), "--batch-sizes", "1,8"],
        "not-int": [str(dyn_onnx), "--out", str(out), "--batch-sizes", "1,x,8"],
        "unordered": [str(dyn_onnx), "--out", str(out), "--batch-sizes", "8,4,16"],
        "zero": [str(dyn_onnx), "--out", str(out), "--batch-sizes", "0,1,2"],
        "static-mismatch": [str(static_onnx), "--out", str(out), "--batch-sizes", "1,4,8"],
        "exists": [str(dyn_onnx), "--out", str(dyn_onnx.with_suffix(".engine"))],
    }[case]
    if case == "exists":
        dyn_onnx.with_suffix(".engine").write_bytes(b"old")
    # tensorrt is unimportable here: reaching it would exit 4, so exit 2 proves the input was checked first.
    assert cli(["build-engine", *args]) == 2
    assert capsys.readouterr().err.strip()
    assert not out.exists()


def test_cli_builds_with_the_stand_in(cli, capsys, fake_trt, static_onnx, tmp_path):
    state = fake_trt("11.1.0")
    out, cache = tmp_path / "s.engine", tmp_path / "s.cache"
    args = ["build-engine", str(static_onnx), "--out", str(out), "--workspace-gib", "0.5", "--opt-level", "2",
            "--timing-cache", str(cache)]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "TensorRT 11.1.0" in printed and "fp32" in printed and "TF32 off" in printed
    assert "max [4, 3, 8, 8]" in printed
    assert state.networks == [0] and state.configs[0].builder_optimization_level == 2
    assert state.configs[0].pool_limits[state.module.MemoryPoolType.WORKSPACE] == 1 << 29
    assert out.read_bytes() == b"SERIALIZED-ENGINE" and cache.is_file()
    assert json.loads(out.with_suffix(".engine.json").read_text())["tensorrt_version"] == "11.1.0"
    assert cli(args) == 2  # exists
    assert cli([*args, "--overwrite", "--tf32"]) == 0
    assert state.module.BuilderFlag.TF32 in state.configs[1].flags


def test_engine_package_imports_neither_runtime_nor_export():
    # tdexport.runtime uses tdexport.engine and tdexport.export uses tdexport.runtime: no cycle back.
    code = ("import sys, tdexport.engine;"
            "bad = [m for m in ('tensorrt', 'onnx', 'tdexport.runtime', 'tdexport.export') if m in sys.modules];"
            "import tdexport.runtime;"
            "bad += [m for m in ('tensorrt', 'tdexport.export') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------------------------- real TensorRT + GPU


def _gpu_missing() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'tdexport[tensorrt]')"
    if not torch.cuda.is_available():
        return "no CUDA device: TensorRT needs an NVIDIA GPU"
    return None


needs_gpu = pytest.mark.skipif(_gpu_missing() is not None, reason=_gpu_missing() or "")
SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.fixture(scope="module")
def built(small_net, tmp_path_factory):
    from tdexport.export import export_onnx

    folder = tmp_path_factory.mktemp("trt")
    onnx_path = export_onnx(small_net, folder / "net.onnx", input_shape=SHAPE, opset=18).path
    engine_path = engine.build_engine(onnx_path, folder / "net.engine", min_batch=1, opt_batch=4, max_batch=8)
    return onnx_path, engine_path


@needs_gpu
def test_gpu_sidecar_and_fresh_runtime(built):
    trt = engine.tensorrt()
    onnx_path, engine_path = built
    sidecar = engine.read_sidecar(engine_path)
    gpu = engine.cuda_device()
    assert sidecar["tensorrt_version"] == trt.__version__ and sidecar["gpu_name"] == gpu.name
    assert sidecar["compute_capability"] == gpu.compute_capability
    assert (sidecar["precision"], sidecar["tf32"], sidecar["strongly_typed"]) == ("fp32", False, True)
    assert sidecar["profile"]["input"] == {"min": [1, *SHAPE], "opt": [4, *SHAPE], "max": [8, *SHAPE]}
    assert engine.engine_is_current(engine_path, onnx_path, min_batch=1, opt_batch=4, max_batch=8)
    deserialized = engine.create_runtime().deserialize_cuda_engine(engine.load_engine_bytes(engine_path))
    assert deserialized is not None and deserialized.num_io_tensors == 2


@needs_gpu
def test_gpu_parity_and_shape_switching(small_net, built):
    from tdexport.runtime import TorchRunner, TrtRunner
    from tdexport.validate.parity import compare_outputs

    onnx_path, engine_path = built
    x = np.random.default_rng(0).standard_normal((9, *SHAPE), dtype=np.float32)
    with TorchRunner(small_net) as ref, TrtRunner(engine_path) as runner, TrtRunner(onnx_path, max_batch=8) as mem:
        assert runner.fixed_batch is None and mem.fixed_batch is None
        for trt_runner in (runner, mem):
            for n in (8, 1, 8, 4):  # one execution context switching shapes
                err = compare_outputs(ref.infer(x[:n]), trt_runner.infer(x[:n])).rel_l2_err
                assert err <= 1e-5, (n, err)
            with pytest.raises(UsageError, match="outside the engine's optimization profile"):
                trt_runner.infer(x)
