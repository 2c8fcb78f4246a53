"""Explicit registry of the classifiers tdexport can compress, and safe checkpoint loading.

* `tdexport.zoo.registry`: names, `ModelInfo`, builders (CIFAR, torchvision, timm), `create_model`;
* `tdexport.zoo.cifar`: the 32x32 networks defined here;
* `tdexport.zoo.weights`: checkpoint files into models (`load_state_dict_file`, `load_weights_into`).

Every name is re-exported here, as when this was one module. A test that replaces a module-level
name (``monkeypatch.setattr``) must patch the submodule that uses it, e.g. ``tdexport.zoo.registry``.
"""

from __future__ import annotations

from .cifar import ChannelPadShortcut, CifarDenseNet, CifarResNet, CifarVGG
from .registry import (
    _REGISTRY,
    _TIMM_NAMES,
    _TORCHVISION,
    SOURCES,
    Builder,
    ModelInfo,
    _build_timm,
    _build_torchvision,
    _download_timeout,
    _fallback_entry,
    _fetch_published,
    _lookup,
    _torchvision_names,
    create_model,
    list_models,
    model_info,
    register_model,
)
from .weights import CHECKPOINT_SUFFIXES, load_state_dict_file, load_weights_into

__all__ = [
    "ModelInfo", "register_model", "list_models", "model_info", "create_model", "load_state_dict_file",
    "load_weights_into",
]  # fmt: skip

# Not in __all__ (as before the split) but importable from tdexport.zoo: used by tdexport.data and tests.
_REEXPORTED = (
    Builder, CHECKPOINT_SUFFIXES, ChannelPadShortcut, CifarDenseNet, CifarResNet, CifarVGG, SOURCES, _REGISTRY,
    _TIMM_NAMES, _TORCHVISION, _build_timm, _build_torchvision, _download_timeout, _fallback_entry,
    _fetch_published, _lookup, _torchvision_names,
)  # fmt: skip
