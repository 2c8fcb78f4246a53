"""Measured layer costs: the dense layer vs its factor chain, timed on the runtime the model will serve on.

A `Target` (``BACKEND[:BATCH]``, `parse_target`) names the runtime. `profile_costs` times each distinct
layer `Geometry` dense and as a factor chain at a grid of ranks, each as a small ONNX graph
(`layer_onnx`) run by the `tdexport.runtime` runners in interleaved rounds (`time_graphs`), and returns a
`CostTable` (ms per call, interpolated in MACs between measured ranks). Timings persist in a `CostCache`
keyed by everything that changes them (`fingerprint`), so a second run measures nothing.
`auto_round_to` measures which rank multiple the target runs best.

Modules: `target`, `geometry`, `graphs` (ONNX builder), `measure` (timer), `cache`, `table`
(`profile_costs`, `CostTable`) and `align` (`auto_round_to`).
"""

from __future__ import annotations

from .align import MULTIPLES, TENSORRT_ALIGNMENT, auto_round_to, tensorrt_alignment
from .cache import CACHE_ENV, CostCache, cost_key, default_cache_path, entry_key
from .geometry import Geometry
from .graphs import DENSE, chain_modules, layer_onnx, modules_onnx
from .measure import time_graphs
from .table import (
    CANDIDATE_FRACTIONS,
    CostPoint,
    CostTable,
    LayerCosts,
    candidate_ranks,
    chain_macs,
    measure_costs,
    profile_costs,
)
from .target import TARGET_BACKENDS, Target, fingerprint, parse_target

__all__ = [
    "CACHE_ENV",
    "CANDIDATE_FRACTIONS",
    "DENSE",
    "MULTIPLES",
    "TARGET_BACKENDS",
    "TENSORRT_ALIGNMENT",
    "CostCache",
    "CostPoint",
    "CostTable",
    "Geometry",
    "LayerCosts",
    "Target",
    "auto_round_to",
    "candidate_ranks",
    "chain_macs",
    "chain_modules",
    "cost_key",
    "default_cache_path",
    "entry_key",
    "fingerprint",
    "layer_onnx",
    "measure_costs",
    "modules_onnx",
    "parse_target",
    "profile_costs",
    "tensorrt_alignment",
    "time_graphs",
]
