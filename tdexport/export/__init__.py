"""Export compressed models for deployment: ONNX (`tdexport.export.onnx`) and TensorRT engines.

``from tdexport.export import export_onnx`` imports torch and onnx; `tdexport.export.tensorrt` imports
tensorrt only when an engine is built, so this package works without it.
"""

from __future__ import annotations

from .onnx import ExportResult, export_onnx
from .tensorrt import build_engine

__all__ = ["ExportResult", "export_onnx", "build_engine"]
