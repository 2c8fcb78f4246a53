"""Explicit registry of the classifiers tdexport can compress, and safe checkpoint loading.

Sources: ``cifar`` (32x32 networks defined here), ``torchvision`` (an explicit list, plus any other
torchvision classifier by fallback) and ``timm`` (optional extra, imported only when such a model is built).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import json
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._lazy import require
from .errors import UsageError, first_line

__all__ = [
    "ModelInfo", "register_model", "list_models", "model_info", "create_model", "load_state_dict_file",
    "load_weights_into",
]  # fmt: skip

SOURCES = ("cifar", "torchvision", "timm")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_DOWNLOAD_SOCKET_TIMEOUT_S = 30.0

#: ``build(num_classes)`` gives a freshly initialised model; ``build(num_classes, pretrained=True)``
#: (never called for ``cifar``) one with the published weights.
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What tdexport knows about a model name.

    Attributes:
        name: the name used with `create_model`.
        source: ``"cifar"``, ``"torchvision"`` or ``"timm"``.
        input_shape: ``(C, H, W)`` of one input image at the model's real resolution.
        default_num_classes: classes of the classifier head when ``num_classes`` is not given.
    """

    name: str
    source: str
    input_shape: tuple[int, int, int]
    default_num_classes: int


_REGISTRY: dict[str, tuple[ModelInfo, Builder]] = {}


def register_model(
    name: str, *, input_size: tuple[int, int, int], default_num_classes: int, source: str
) -> Callable[[Builder], Builder]:
    """Decorator registering a `Builder` ``fn(num_classes[, pretrained=True]) -> nn.Module`` as ``name``.

    Args:
        name: unique model name.
        input_size: ``(C, H, W)`` input resolution the model is meant for.
        default_num_classes: head size when the caller does not choose one.
        source: one of ``"cifar"``, ``"torchvision"``, ``"timm"``.

    Raises:
        ValueError: ``name`` is already registered, or ``source`` is unknown.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown model source {source!r}; expected one of {', '.join(SOURCES)}")

    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        c, h, w = input_size
        _REGISTRY[name] = (ModelInfo(name, source, (c, h, w), int(default_num_classes)), fn)
        return fn

    return decorator


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _kaiming_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ChannelPadShortcut(nn.Module):
    """Parameter-free "option A" shortcut ``(N, C, H, W) -> (N, C + 2 * pad, ceil(H/2), ceil(W/2))``.

    Subsamples H and W by 2 and zero-pads channels on both sides; a module, not a lambda, so that it
    pickles and exports to ONNX (as Slice + Pad).
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample and pad ``x`` of shape ``(N, C, H, W)``."""
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        same = stride == 1 and c_in == c_out
        self.shortcut: nn.Module = nn.Identity() if same else ChannelPadShortcut((c_out - c_in) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet of depth ``6n + 2``: ``(N, 3, 32, 32) -> (N, num_classes)``.

    Args:
        blocks_per_stage: ``n``, BasicBlocks in each of the three stages (16, 32, 64 channels).
        num_classes: size of the final linear layer.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        stages, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(_BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x`` of shape ``(N, 3, H, W)`` into logits of shape ``(N, num_classes)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


_VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip


class CifarVGG(nn.Module):
    """VGG-19 with BatchNorm for 32x32 input: ``(N, 3, 32, 32) -> (N, num_classes)``.

    Five max-pools bring 32x32 to 1x1, so the classifier is a single ``Linear(512, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, cfg: tuple[int | str, ...] = _VGG19_CFG) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [_conv3x3(c_in, int(v)), nn.BatchNorm2d(int(v)), nn.ReLU()]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x`` of shape ``(N, 3, 32, 32)`` into logits of shape ``(N, num_classes)``."""
        return self.classifier(torch.flatten(self.features(x), 1))


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 whose ``growth`` output channels are concatenated to its input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = _conv3x3(c_in, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


def _transition(c: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 1, bias=False), nn.AvgPool2d(2))


class CifarDenseNet(nn.Module):
    """DenseNet (non-BC, no compression) for CIFAR: ``(N, 3, 32, 32) -> (N, num_classes)``.

    Args:
        depth: ``3 * layers_per_block + 4``; 40 gives 12 layers per block.
        growth: channels each dense layer adds.
        num_classes: size of the final linear layer.
    """

    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        n_layers = (depth - 4) // 3
        channels = 16
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(n_layers):
                layers.append(_DenseLayer(channels, growth))
                channels += growth
            if block < 2:
                layers.append(_transition(channels))
        layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x`` of shape ``(N, 3, 32, 32)`` into logits of shape ``(N, num_classes)``."""
        return self.classifier(torch.flatten(self.features(x), 1))


_CIFAR: dict[str, Any] = {"input_size": (3, 32, 32), "default_num_classes": 10, "source": "cifar"}
register_model("resnet20", **_CIFAR)(functools.partial(CifarResNet, 3))
register_model("resnet32", **_CIFAR)(functools.partial(CifarResNet, 5))
register_model("resnet56", **_CIFAR)(functools.partial(CifarResNet, 9))
register_model("vgg19_cifar", **_CIFAR)(CifarVGG)
register_model("densenet40", **_CIFAR)(functools.partial(CifarDenseNet, 40, 12))


@contextlib.contextmanager
def _download_timeout() -> Iterator[None]:
    """Give sockets opened meanwhile a timeout, so an offline download fails instead of hanging."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(_DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _fetch_published(name: str, build: Callable[[], nn.Module]) -> nn.Module:
    """Run ``build`` (which downloads weights); any failure becomes one UsageError line."""
    try:  # torch.hub / timm download into their caches; offline this raises URLError, OSError, ...
        with _download_timeout():
            return build()
    except Exception as err:
        msg = f"cannot fetch published weights for {name!r} (offline?): "
        raise UsageError(msg + "use --weights random or a local checkpoint path") from err


def _build_torchvision(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    import torchvision.models as tvm

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):  # a plain classifier: one tensor out, no auxiliary heads
        kwargs["aux_logits"] = False
        if not pretrained:
            kwargs["init_weights"] = True
    if not pretrained:
        if name.startswith("vit_"):  # ViTs are built for one resolution; match model_info's
            kwargs["image_size"] = _lookup(name)[0].input_shape[1]
        return tvm.get_model(name, weights=None, **kwargs)
    weights = tvm.get_model_weights(name).DEFAULT
    return _fetch_published(name, lambda: tvm.get_model(name, weights=weights, **kwargs))


_TIMM_NAMES = {"deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224"}


def _build_timm(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    timm = require("timm", extra="timm")
    build = functools.partial(
        timm.create_model, _TIMM_NAMES[name], pretrained=pretrained, num_classes=num_classes
    )
    return _fetch_published(name, build) if pretrained else build()


_TORCHVISION = (
    "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2", "vgg16", "vgg16_bn", "vgg19",
    "alexnet", "googlenet", "densenet121",
)  # fmt: skip
for _name in _TORCHVISION:
    register_model(_name, input_size=(3, 224, 224), default_num_classes=1000, source="torchvision")(
        functools.partial(_build_torchvision, _name)
    )
register_model("inception_v3", input_size=(3, 299, 299), default_num_classes=1000, source="torchvision")(
    functools.partial(_build_torchvision, "inception_v3")
)
for _name in _TIMM_NAMES:
    register_model(_name, input_size=(3, 224, 224), default_num_classes=1000, source="timm")(
        functools.partial(_build_timm, _name)
    )


@functools.lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    """Every torchvision classification model (detection, segmentation, video... live in submodules)."""
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


@functools.cache
def _fallback_entry(name: str) -> tuple[ModelInfo, Builder]:
    """Describe a torchvision classifier that is not registered explicitly, from its default weights."""
    import torchvision.models as tvm

    size, classes = 224, 1000
    with contextlib.suppress(Exception):  # metadata only: keep the ImageNet defaults if it is missing
        weights = tvm.get_model_weights(name).DEFAULT
        size = int(weights.transforms.keywords.get("crop_size", size))
        classes = len(weights.meta["categories"])
    info = ModelInfo(name, "torchvision", (3, size, size), classes)
    return info, functools.partial(_build_torchvision, name)


def _lookup(name: str) -> tuple[ModelInfo, Builder]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _torchvision_names():
        return _fallback_entry(name)
    known = sorted(set(_REGISTRY) | set(_torchvision_names()))
    close = difflib.get_close_matches(name, known, n=5)
    hint = f"did you mean: {', '.join(close)}?" if close else "list_models() shows the registered names"
    raise UsageError(f"unknown model {name!r}; {hint}")


def list_models(pattern: str | None = None, *, include_torchvision: bool = False) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern.

    Args:
        pattern: ``fnmatch`` pattern such as ``"resnet*"``; ``None`` lists everything.
        include_torchvision: also list the torchvision classifiers that resolve by fallback.
    """
    names = set(_REGISTRY) | (set(_torchvision_names()) if include_torchvision else set())
    return sorted(n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern))


def model_info(name: str) -> ModelInfo:
    """Describe model ``name`` without building it.

    Raises:
        UsageError: unknown name (the message suggests close names).
    """
    return _lookup(name)[0]


def create_model(
    name: str, *, weights: str | os.PathLike[str] | None = "default", num_classes: int | None = None
) -> nn.Module:
    """Build model ``name`` on CPU in eval mode.

    Args:
        name: a registered name or any torchvision classification model name.
        weights: ``"random"``/``None`` (fresh init), ``"default"`` (published weights) or the path of a
            checkpoint file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) or directory.
        num_classes: classifier head size; defaults to ``model_info(name).default_num_classes``.

    Returns:
        The model; it maps ``(N, *model_info(name).input_shape)`` to logits ``(N, num_classes)``.

    Raises:
        UsageError: unknown name, bad ``num_classes``, no/unreachable published weights, bad checkpoint.
        BackendUnavailable: the model needs an optional package (``timm``) that is not installed.
    """
    info, build = _lookup(name)
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    n_classes = info.default_num_classes if num_classes is None else int(num_classes)
    if num_classes is None and weights not in (None, "default", "random"):
        n_classes = _classes_of_run_dir(weights, n_classes)
    if weights == "default":
        if info.source == "cifar":
            raise UsageError(
                f"model {name!r} has no published weights: use --weights random or a local checkpoint path"
            )
        if n_classes != info.default_num_classes:
            raise UsageError(
                f"published weights for {name!r} have {info.default_num_classes} classes, not {n_classes}: "
                "drop num_classes, or use --weights random or a local checkpoint path"
            )
        model = build(n_classes, pretrained=True)
    elif weights is None or weights == "random":
        model = build(n_classes)
    else:
        path = _as_checkpoint_path(weights)
        state_dict = load_state_dict_file(path)  # read (and validate) before building a large model
        model = build(n_classes)
        load_weights_into(model, state_dict, source=str(path))
    return model.to("cpu").eval()


def _classes_of_run_dir(weights: str | os.PathLike[str], fallback: int) -> int:
    # A `tdexport train` run directory records its class count (model.json): use it, so
    # `--weights runs/base` works for a 10-class digits model without repeating --num-classes.
    meta = Path(weights) / "model.json"
    if meta.is_file():
        try:
            value = json.loads(meta.read_text()).get("num_classes")
        except (OSError, ValueError):
            return fallback
        if isinstance(value, int) and value >= 1:
            return value
    return fallback


def _as_checkpoint_path(weights: str | os.PathLike[str]) -> Path:
    text = os.fspath(weights)
    path = Path(text)
    separators = [s for s in (os.sep, os.altsep, "/") if s]
    looks_like_path = any(s in text for s in separators) or path.suffix.lower() in CHECKPOINT_SUFFIXES
    if isinstance(weights, os.PathLike) or looks_like_path or path.exists():
        return path
    raise UsageError(f"invalid weights {text!r}: expected 'default', 'random' or a checkpoint path")


def _torch_load_reason(err: Exception) -> str:
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if refused:  # weights_only=True refused to unpickle a class: never fall back to full unpickling
        return (
            f"it pickles a Python object ({refused.group(1)}), refused for safety; "
            "save model.state_dict() or use .safetensors"
        )
    inner = err.__context__ if isinstance(err.__context__, Exception) else err
    return first_line(inner)


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a checkpoint file or directory, without unpickling arbitrary objects.

    Reads ``*.safetensors``; ``*.pth``/``*.pt``/``*.bin`` via ``torch.load(weights_only=True)``, holding
    a state dict or a dict wrapping one under ``"state_dict"`` or ``"model"``; or a directory containing
    ``model.safetensors``. Keys all prefixed with ``module.`` (DataParallel/DDP) lose the prefix.
    This is the one entry point for weights on disk: new checkpoint-directory layouts (e.g. compressed
    checkpoints) belong in its directory branch.

    Args:
        path: file or directory.

    Returns:
        Mapping from parameter/buffer name to CPU tensor.

    Raises:
        UsageError: missing path, unsupported suffix, unreadable/corrupt file, no state dict inside.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint not found: {path}")
    if path.is_dir():
        # Hook for other checkpoint-directory layouts: dispatch on their marker files here.
        file = path / "model.safetensors"
        if not file.is_file():
            raise UsageError(f"checkpoint directory {path} has no model.safetensors")
        path = file
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        import safetensors.torch

        try:
            obj: Any = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as err:
            raise UsageError(f"cannot read checkpoint {path}: {first_line(err)}") from err
    elif suffix in CHECKPOINT_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UsageError(f"cannot read checkpoint {path}: {_torch_load_reason(err)}") from err
    else:
        raise UsageError(
            f"unsupported checkpoint format {suffix or '(no suffix)'!r} for {path}: expected "
            f"{', '.join(CHECKPOINT_SUFFIXES)} or a directory containing model.safetensors"
        )
    if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        obj = next((obj[k] for k in ("state_dict", "model") if _is_tensor_dict(obj.get(k))), obj)
    if not _is_tensor_dict(obj):
        raise UsageError(
            f"cannot read checkpoint {path}: no state dict found "
            "(expected a dict of tensors, or one under 'state_dict' or 'model')"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def load_weights_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state_dict`` into ``model`` with strict semantics and a one-line error when it does not fit.

    Missing ``num_batches_tracked`` BatchNorm buffers are tolerated (PyTorch fills them in).

    Args:
        model: the model to update in place.
        state_dict: parameter/buffer name to tensor.
        source: where the weights came from (a path), used in error messages.

    Raises:
        UsageError: missing or unexpected keys, or shape mismatches; counts and up to 3 examples each.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
        for k, v in state_dict.items()
        if k in expected and expected[k].shape != v.shape
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
    problems = [f"{len(items)} {what} ({_examples(items)})" for what, items in found.items() if items]
    if problems:
        raise UsageError(f"checkpoint {source} does not fit the model: {'; '.join(problems)}")
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as err:
        raise UsageError(f"checkpoint {source} does not fit the model: {first_line(err)}") from err
