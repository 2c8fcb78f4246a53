"""Writing the report's files: report.json, report.md and two PNG plots, each complete or not at all.

Every file is rendered in memory first; each is then written under a temporary name and renamed into
place (`tdexport._io.atomic_write_bytes`), so a failure leaves no partial or temporary file behind.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write_bytes
from .markdown import render_markdown
from .plots import plot_latency, plot_layers

if TYPE_CHECKING:
    from ..plan import Plan

__all__ = ["FILES", "layer_rows", "write_report"]

FILES = {"json": "report.json", "markdown": "report.md", "plot_layers": "plot_layers.png",
         "plot_latency": "plot_latency.png"}
_LAYER_KEYS = ("name", "type", "shape", "decision", "method", "ranks", "params_before", "params_after",
               "macs_before", "macs_after", "rel_error", "reason", "dense_ms", "chain_ms", "modes", "storage_ratio")


def layer_rows(plan: Plan | Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The per-layer table of a plan (or plan.json dict) as report rows; [] without a plan."""
    if plan is None:
        return []
    layers = plan["layers"] if isinstance(plan, Mapping) else plan.layers
    rows = []
    for entry in layers:
        data = entry if isinstance(entry, Mapping) else dataclasses.asdict(entry)
        rows.append({key: data.get(key) for key in _LAYER_KEYS})
    return rows


def write_report(report: Mapping[str, Any], out_dir: str | Path, *,
                 plan: Plan | Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write report.json, report.md, plot_layers.png and plot_latency.png into ``out_dir``.

    All four are rendered in memory before anything is written; each file is then written under a
    temporary name and renamed into place, so a failure leaves no partial or temporary file behind and
    an existing report is only ever replaced whole.

    Args:
        report: a dict from `build_report`.
        out_dir: the run folder (created if missing).
        plan: when given, the per-layer table and plot come from it instead of ``report["layers"]``.

    Returns:
        ``{"json", "markdown", "plot_layers", "plot_latency"}`` → paths written.

    Raises:
        TypeError: a value in ``report`` cannot be serialised to JSON (nothing is written).
        ValueError: a NaN or infinity in ``report`` (JSON has none; nothing is written).
    """
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    layers = layer_rows(plan) if plan is not None else list(report.get("layers") or [])
    contents = {
        "json": text.encode(),
        "markdown": (render_markdown(report, layers) + "\n").encode(),
        "plot_layers": plot_layers(layers),
        "plot_latency": plot_latency(report.get("latency")),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, data in contents.items():
        paths[key] = out / FILES[key]
        atomic_write_bytes(paths[key], data)
    return paths
