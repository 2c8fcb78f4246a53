"""Installed package versions, for reports, cache keys and engine sidecars (no tdexport imports)."""

from __future__ import annotations

from importlib import metadata

__all__ = ["package_version"]


def package_version(*distributions: str) -> str | None:
    """Installed version of the first of ``distributions`` found (e.g. ``onnxruntime-gpu``), or None."""
    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None
