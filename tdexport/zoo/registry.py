"""The registry: model names, what they are (`ModelInfo`), how to build them, with which weights.

Sources: ``cifar`` (`tdexport.zoo.cifar`), ``torchvision`` (an explicit list, plus any other torchvision
classifier by fallback) and ``timm`` (optional extra, imported only when such a model is built).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._lazy import require
from ..errors import UsageError
from .cifar import CifarDenseNet, CifarResNet, CifarVGG
from .weights import _as_checkpoint_path, _classes_of_run_dir, load_state_dict_file, load_weights_into

__all__ = ["Builder", "ModelInfo", "SOURCES", "create_model", "list_models", "model_info", "register_model"]

SOURCES = ("cifar", "torchvision", "timm")
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


# ---------------------------------------------------------------------------------------------- cifar

_CIFAR: dict[str, Any] = {"input_size": (3, 32, 32), "default_num_classes": 10, "source": "cifar"}
register_model("resnet20", **_CIFAR)(functools.partial(CifarResNet, 3))
register_model("resnet32", **_CIFAR)(functools.partial(CifarResNet, 5))
register_model("resnet56", **_CIFAR)(functools.partial(CifarResNet, 9))
register_model("vgg19_cifar", **_CIFAR)(CifarVGG)
register_model("densenet40", **_CIFAR)(functools.partial(CifarDenseNet, 40, 12))


# ---------------------------------------------------------------------------------------------- torchvision, timm


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


@contextlib.contextmanager
def _hub_cache_only_when_unreachable() -> Iterator[None]:
    """Put huggingface_hub in offline mode (its cache only) while its host does not resolve.

    Offline, the hub's own retries with back-off spend about a minute before failing the same way; a cached
    download still loads in offline mode.
    """
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        reachable = True
    except OSError:
        reachable = False
    try:
        import huggingface_hub.constants as hub
    except ImportError:
        hub = None
    if reachable or hub is None:
        yield
        return
    previous, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = previous


def _build_timm(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    timm = require("timm", extra="timm")
    build = functools.partial(
        timm.create_model, _TIMM_NAMES[name], pretrained=pretrained, num_classes=num_classes
    )
    if not pretrained:
        return build()
    with _hub_cache_only_when_unreachable():
        return _fetch_published(name, build)


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


# ---------------------------------------------------------------------------------------------- lookup


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
