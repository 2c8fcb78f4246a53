"""Lazy import of optional dependencies, so `import tdexport` never needs the extras."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import BackendUnavailable


def require(module: str, *, extra: str) -> ModuleType:
    """Import an optional module or raise `BackendUnavailable` naming the pip extra that provides it.

    Args:
        module: importable module name, e.g. ``"timm"``.
        extra: the tdexport extra that installs it, e.g. ``"timm"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise BackendUnavailable(
            f"'{module}' is not installed; install it with: pip install 'tdexport[{extra}]'"
        ) from err
