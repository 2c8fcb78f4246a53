"""tdexport: compress vision models with tensor decompositions and export them for deployment.

The Python API mirrors the CLI::

    import tdexport
    result = tdexport.compress("resnet50", format="tucker", rank="vbmf", weights="random")
    tdexport.save("runs/r50", result)
    model = tdexport.load("runs/r50")

Attributes are resolved lazily (PEP 562) so that ``tdexport --help`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "compress": "api",
    "load": "api",
    "save": "api",
    "survey": "api",
    "Compressed": "plan",
    "Plan": "plan",
    "apply_plan": "plan",
    "create_model": "zoo",
    "list_models": "zoo",
    "BackendUnavailable": "errors",
    "DecompositionError": "errors",
    "GateFailed": "errors",
    "TdexportError": "errors",
    "UsageError": "errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tdexport' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Public names, including the lazily imported ones."""
    return sorted(set(globals()) | set(_EXPORTS))
