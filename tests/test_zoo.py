"""Tests of the model registry and checkpoint loading in tdexport.zoo (CPU only, no network)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import safetensors.torch
import torch
from torch import nn

from tdexport import zoo
from tdexport.errors import BackendUnavailable, UsageError

CIFAR_MODELS = ["resnet20", "resnet32", "resnet56", "vgg19_cifar", "densenet40"]


class Arbitrary:
    """A plain Python object: pickling it into a checkpoint must be refused on load."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    # Tests must never download. torchvision fetches published weights with
    # torchvision.models._api.load_state_dict_from_url (imported from torch.hub), which calls
    # torch.hub.download_url_to_file. Offline, those raise URLError; make them do so immediately
    # (an unpatched attempt may hang instead), and use an empty hub cache so no earlier download
    # on this machine is picked up.
    import torch.hub
    import torchvision.models._api as tv_api

    def refuse(*args, **kwargs):
        raise URLError("network disabled in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trained_like(name: str = "resnet20", **kwargs) -> nn.Module:
    """A model whose BN statistics differ from their initial values, so loading them is observable."""
    torch.manual_seed(0)
    model = zoo.create_model(name, weights="random", **kwargs)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    return model.eval()


def outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32))


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_model_forward(name, num_classes):
    model = zoo.create_model(name, weights="random", num_classes=num_classes)
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    logits = outputs(model)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("resnet20", 0.26e6, 0.28e6),
        ("resnet32", 0.44e6, 0.48e6),
        ("resnet56", 0.85e6 * 0.95, 0.85e6 * 1.05),
        ("densenet40", 0.9e6, 1.1e6),
        ("vgg19_cifar", 19.5e6, 20.5e6),
    ],
)
def test_cifar_param_counts(name, low, high):
    assert low <= n_params(zoo.create_model(name, weights="random")) <= high


def test_cifar_convs_before_bn_have_no_bias_and_shortcut_is_a_module():
    model = zoo.create_model("resnet20", weights="random")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.bias is None for c in convs)
    shortcuts = [m for m in model.modules() if isinstance(m, zoo.ChannelPadShortcut)]
    assert len(shortcuts) == 2  # at the start of stages 2 and 3
    y = shortcuts[0](torch.ones(1, 16, 32, 32))
    assert y.shape == (1, 32, 16, 16)
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0 and (y[:, 8:24] == 1).all()


def test_resnet20_exports_to_onnx_and_matches(tmp_path):
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module)
    import onnxruntime as ort

    model = trained_like("resnet20")
    x = torch.randn(1, 3, 32, 32)
    path = tmp_path / "resnet20.onnx"
    torch.onnx.export(model, (x,), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "googlenet", "squeezenet1_0"])
def test_torchvision_models_random_weights(name):
    torch.manual_seed(0)
    model = zoo.create_model(name, weights=None, num_classes=7)
    assert not model.training
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 7)
    assert torch.isfinite(logits).all()


def test_fallback_torchvision_name_is_known_but_not_registered():
    assert "squeezenet1_0" not in zoo.list_models()
    assert "squeezenet1_0" in zoo.list_models("squeeze*", include_torchvision=True)
    info = zoo.model_info("efficientnet_b0")
    assert (info.source, info.input_shape, info.default_num_classes) == ("torchvision", (3, 224, 224), 1000)
    assert zoo.model_info("efficientnet_b3").input_shape == (3, 300, 300)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UsageError) as err:
        zoo.create_model("resnet5", weights="random")
    msg = str(err.value)
    assert msg.startswith("unknown model 'resnet5'; did you mean: ")
    assert "resnet50" in msg and "resnet56" in msg and "\n" not in msg
    assert len(msg.split(": ", 1)[1].split(", ")) <= 5
    assert err.value.exit_code == 2
    with pytest.raises(UsageError, match="did you mean: .*squeezenet1_0"):
        zoo.model_info("squeezenet")  # close names include torchvision fallbacks


def test_list_models_and_model_info():
    cifar_resnets = zoo.list_models("resnet[0-9][0-9]")
    assert {"resnet20", "resnet32", "resnet56", "resnet18", "resnet50"} <= set(cifar_resnets)
    assert zoo.list_models("*_cifar") == ["vgg19_cifar"]
    assert zoo.list_models() == sorted(zoo.list_models())
    assert {"deit_tiny", "deit_small", "densenet40", "alexnet", "vgg16_bn"} <= set(zoo.list_models())
    assert zoo.model_info("resnet20") == zoo.ModelInfo("resnet20", "cifar", (3, 32, 32), 10)
    assert zoo.model_info("resnet50").input_shape == (3, 224, 224)
    assert zoo.model_info("inception_v3").input_shape == (3, 299, 299)
    assert zoo.model_info("deit_tiny").source == "timm"
    with pytest.raises(dataclasses.FrozenInstanceError):
        zoo.model_info("resnet20").name = "x"


def test_register_model_rejects_duplicates(monkeypatch):
    # Patch the module that reads the registry (the package only re-exports it), so the test model
    # does not leak into the real registry.
    monkeypatch.setattr(zoo.registry, "_REGISTRY", dict(zoo._REGISTRY))

    @zoo.register_model("tiny_test_net", input_size=(1, 8, 8), default_num_classes=3, source="cifar")
    def tiny(num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    assert zoo.create_model("tiny_test_net", weights="random")(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="already registered"):
        zoo.register_model("resnet20", input_size=(3, 32, 32), default_num_classes=10, source="cifar")(tiny)
    with pytest.raises(ValueError, match="source"):
        zoo.register_model("other", input_size=(3, 32, 32), default_num_classes=10, source="hub")
    monkeypatch.undo()
    assert "tiny_test_net" not in zoo.list_models()


def test_bad_num_classes():
    with pytest.raises(UsageError, match="num_classes"):
        zoo.create_model("resnet20", weights="random", num_classes=0)


def test_import_does_not_import_timm():
    code = "import sys, tdexport.zoo; print('timm' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_model_without_timm_is_unavailable():
    with pytest.raises(BackendUnavailable, match="timm"):
        zoo.create_model("deit_tiny", weights="random")


# ---------------------------------------------------------------- published weights


def test_cifar_models_have_no_published_weights():
    with pytest.raises(UsageError, match=r"no published weights.*--weights random"):
        zoo.create_model("resnet56")  # weights="default" is the default


def test_default_weights_offline_gives_one_line_error():
    with pytest.raises(UsageError) as err:
        zoo.create_model("resnet18", weights="default")
    assert str(err.value) == (
        "cannot fetch published weights for 'resnet18' (offline?): "
        "use --weights random or a local checkpoint path"
    )
    assert isinstance(err.value.__cause__, URLError)


def test_default_weights_with_other_num_classes_is_refused():
    with pytest.raises(UsageError, match="1000 classes, not 7"):
        zoo.create_model("resnet18", weights="default", num_classes=7)


# ---------------------------------------------------------------- checkpoints


def _save_safetensors(sd, path):
    safetensors.torch.save_file(sd, str(path))


def _save_module_prefixed(sd, path):
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)


@pytest.mark.parametrize(
    ("filename", "save"),
    [
        ("w.safetensors", _save_safetensors),
        ("w.pth", lambda sd, p: torch.save(sd, p)),
        ("w.pt", _save_module_prefixed),
        ("w.pth", lambda sd, p: torch.save({"state_dict": sd, "epoch": 7, "acc": 0.9}, p)),
        ("w.bin", lambda sd, p: torch.save({"model": sd, "optimizer": {"lr": 0.1}}, p)),
        ("ckpt/model.safetensors", _save_safetensors),
    ],
    ids=["safetensors", "pth", "dataparallel-pt", "state_dict-wrapper", "model-wrapper-bin", "directory"],
)
def test_checkpoint_round_trip(tmp_path, filename, save):
    saved = trained_like("resnet20")
    path = tmp_path / filename
    path.parent.mkdir(exist_ok=True)
    save(saved.state_dict(), path)
    target = path.parent if filename.startswith("ckpt/") else path
    loaded = zoo.create_model("resnet20", weights=str(target))
    assert not loaded.training
    assert torch.equal(outputs(loaded), outputs(saved))
    assert not torch.equal(outputs(zoo.create_model("resnet20", weights="random")), outputs(saved))


def test_load_state_dict_file_strips_module_prefix(tmp_path):
    path = tmp_path / "dp.pt"
    _save_module_prefixed({"a.weight": torch.ones(2), "b": torch.zeros(1)}, path)
    sd = zoo.load_state_dict_file(path)
    assert set(sd) == {"a.weight", "b"} and torch.equal(sd["a.weight"], torch.ones(2))


def test_missing_batchnorm_counters_are_tolerated(tmp_path):
    saved = trained_like("resnet20")
    sd = {k: v for k, v in saved.state_dict().items() if not k.endswith("num_batches_tracked")}
    _save_safetensors(sd, tmp_path / "old.safetensors")
    loaded = zoo.create_model("resnet20", weights=str(tmp_path / "old.safetensors"))
    assert torch.equal(outputs(loaded), outputs(saved))


@pytest.mark.parametrize("payload", [Arbitrary(), nn.Linear(2, 2)], ids=["object", "whole-module"])
def test_pickled_objects_are_refused(tmp_path, payload):
    path = tmp_path / "evil.pth"
    torch.save(payload, path)
    with pytest.raises(UsageError) as err:
        zoo.create_model("resnet20", weights=str(path))
    msg = str(err.value)
    assert msg.startswith(f"cannot read checkpoint {path}: ") and "refused" in msg and "\n" not in msg


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(UsageError, match=f"^checkpoint not found: {path}$"):
        zoo.create_model("resnet20", weights=str(path))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_checkpoint(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(UsageError) as err:
        zoo.create_model("resnet20", weights=str(path))
    msg = str(err.value)
    assert msg.startswith(f"cannot read checkpoint {path}: ") and "\n" not in msg


def test_unsupported_suffix_non_state_dict_and_bad_weights_value(tmp_path):
    odd = tmp_path / "w.ckpt"
    odd.write_bytes(b"x")
    with pytest.raises(UsageError, match="unsupported checkpoint format '.ckpt'"):
        zoo.create_model("resnet20", weights=str(odd))
    meta = tmp_path / "meta.pth"
    torch.save({"epoch": 3}, meta)
    with pytest.raises(UsageError, match="no state dict found"):
        zoo.create_model("resnet20", weights=str(meta))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UsageError, match="has no model.safetensors"):
        zoo.create_model("resnet20", weights=str(tmp_path / "empty_dir"))
    with pytest.raises(UsageError, match="expected 'default', 'random' or a checkpoint path"):
        zoo.create_model("resnet20", weights="imagenet")


def test_shape_mismatch_is_reported(tmp_path):
    path = tmp_path / "c10.safetensors"
    _save_safetensors(zoo.create_model("resnet20", weights="random").state_dict(), path)
    with pytest.raises(UsageError) as err:
        zoo.create_model("resnet20", weights=str(path), num_classes=100)
    msg = str(err.value)
    assert msg.startswith(f"checkpoint {path} does not fit the model: 2 shape mismatches")
    assert "fc.weight: expected (100, 64), got (10, 64)" in msg and "fc.bias" in msg
    assert "missing" not in msg and "\n" not in msg


def test_key_mismatches_are_reported(tmp_path):
    small, big = tmp_path / "r20.pth", tmp_path / "r32.pth"
    torch.save(zoo.create_model("resnet20", weights="random").state_dict(), small)
    torch.save(zoo.create_model("resnet32", weights="random").state_dict(), big)
    with pytest.raises(UsageError) as err:
        zoo.create_model("resnet32", weights=str(small))
    msg = str(err.value)
    # resnet32 has 6 more blocks of 2 convs + 2 BNs (4 tensors each, plus num_batches_tracked,
    # which may be missing: PyTorch fills it in)
    assert "60 missing keys (layer1.3.conv1.weight, layer1.3.bn1.weight, layer1.3.bn1.bias, ...)" in msg
    assert "unexpected" not in msg
    with pytest.raises(UsageError, match=r"72 unexpected keys \(layer1\.3\.conv1\.weight"):
        zoo.create_model("resnet20", weights=str(big))


# ---------------------------------------------------------------- package layout

# Every module-level name callers may use from the single-module tdexport.zoo that preceded the package.
_PUBLIC_BEFORE_SPLIT = {
    "registry": ["ModelInfo", "Builder", "SOURCES", "register_model", "list_models", "model_info", "create_model",
                 "_REGISTRY", "_lookup", "_build_torchvision", "_build_timm", "_fallback_entry",
                 "_torchvision_names", "_fetch_published", "_download_timeout", "_TORCHVISION", "_TIMM_NAMES"],
    "cifar": ["ChannelPadShortcut", "CifarResNet", "CifarVGG", "CifarDenseNet"],
    "weights": ["CHECKPOINT_SUFFIXES", "load_state_dict_file", "load_weights_into"],
}


@pytest.mark.parametrize("submodule", sorted(_PUBLIC_BEFORE_SPLIT))
def test_names_of_the_former_module_are_importable_from_the_package(submodule):
    module = getattr(zoo, submodule)
    for name in _PUBLIC_BEFORE_SPLIT[submodule]:
        assert getattr(zoo, name) is getattr(module, name), name
    assert set(zoo.__all__) <= {n for names in _PUBLIC_BEFORE_SPLIT.values() for n in names}


def test_top_level_api_reaches_the_zoo():
    import tdexport

    assert tdexport.create_model is zoo.create_model and tdexport.list_models is zoo.list_models
    assert tdexport.create_model("resnet20", weights="random", num_classes=3)(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    assert zoo._lookup("resnet20")[0] == zoo.model_info("resnet20")
