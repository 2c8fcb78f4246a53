"""Export compressed models for deployment: ONNX (`tdexport.export.onnx`) and TensorRT engines.

``from tdexport.export import export_onnx`` imports torch and onnx. `build_engine` comes from
`tdexport.engine` (re-exported here and in `tdexport.export.tensorrt`), which imports tensorrt only when an
engine is built, so this package works without it.
"""

from __future__ import annotations

from ..engine import build_engine
from .onnx import ExportResult, export_onnx

__all__ = ["ExportResult", "export_onnx", "build_engine"]
