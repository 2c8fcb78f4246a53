"""Compatibility alias: TensorRT engine building lives in `tdexport.engine`.

``from tdexport.export.tensorrt import build_engine`` keeps working; new code imports `tdexport.engine`.
"""

from __future__ import annotations

from ..engine import EngineBuildError, build_engine, build_serialized, engine_is_current, load_engine_bytes

__all__ = ["EngineBuildError", "build_engine", "build_serialized", "engine_is_current", "load_engine_bytes"]
