"""The report's two PNG plots, rendered to bytes: decomposed layers, and latency against batch size.

matplotlib is imported inside the functions, so importing the report modules stays light.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_latency", "plot_layers"]


def _figure(width: float, height: float) -> Any:
    # The Agg canvas is attached to the figure directly instead of going through pyplot: no global backend
    # switch in the caller's process (a notebook keeps its own), no pyplot figure registry to leak.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def plot_layers(layers: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG of horizontal bars per decomposed layer: MACs, ranks and, with a target, time saved.

    Panels: MACs before/after; ranks against the full mode sizes; when the plan was measured on a target,
    the share of the dense layer's time saved beside the share of its MACs saved.

    Args:
        layers: per-layer rows as in ``report["layers"]`` (name, shape, decision, method, ranks, macs_*,
            and optionally dense_ms / chain_ms).

    Returns:
        PNG bytes (a placeholder figure when no layer was decomposed).
    """
    done = [e for e in layers if e["decision"] == "decomposed"]
    fig = _figure(12, max(3.0, 0.3 * len(done) + 1.5))
    if not done:
        fig.text(0.5, 0.5, "no decomposed layers", ha="center", va="center")
        return _png(fig)
    timed = all(e.get("dense_ms") is not None and e.get("chain_ms") is not None for e in done)
    axes = fig.subplots(1, 3 if timed else 2, sharey=True)
    ax_macs, ax_ranks = axes[0], axes[1]
    y = list(range(len(done)))
    h = 0.4
    # Linear axis on purpose: bars on a log axis make a 4x cut look like a sliver of the original.
    ax_macs.barh([v - h / 2 for v in y], [e["macs_before"] / 1e6 for e in done], h, label="before")
    ax_macs.barh([v + h / 2 for v in y], [e["macs_after"] / 1e6 for e in done], h, label="after")
    ax_macs.set_xlabel("MACs per image (millions)")
    ax_macs.set_yticks(y, [e["name"] for e in done], fontsize=7)
    ax_macs.invert_yaxis()
    ax_macs.legend(fontsize=8)
    first = [e["ranks"][0] if e["ranks"] else 0 for e in done]
    second = [e["ranks"][1] if len(e["ranks"] or []) > 1 else 0 for e in done]
    ax_ranks.barh([v - h / 2 for v in y], first, h, label="rank (output / only)")
    ax_ranks.barh([v + h / 2 for v in y], second, h, label="rank (input)")
    sizes_y, sizes_x = [], []
    for v, e in zip(y, done, strict=True):
        shape = e["shape"] or []
        if e["method"] == "tucker2" and len(shape) >= 2:
            sizes_y += [v - h / 2, v + h / 2]
            sizes_x += [shape[0], shape[1]]
        elif e["method"] == "svd" and len(shape) >= 2:
            sizes_y.append(v - h / 2)
            sizes_x.append(min(shape[0], math.prod(shape[1:])))
    if sizes_x:
        ax_ranks.scatter(sizes_x, sizes_y, marker="|", color="black", s=60, label="full size")
    ax_ranks.set_xlabel("rank")
    ax_ranks.legend(fontsize=8)
    if timed:
        # Percent of the layer's own time and MACs, so a layer whose MAC cut does not become speed stands out.
        ax_time = axes[2]
        ax_time.barh([v - h / 2 for v in y], [100 * (1 - e["macs_after"] / e["macs_before"]) for e in done], h,
                     label="MACs saved")
        ax_time.barh([v + h / 2 for v in y], [100 * (1 - e["chain_ms"] / e["dense_ms"]) for e in done], h,
                     label="time saved on target")
        ax_time.set_xlabel("% of the dense layer saved")
        ax_time.legend(fontsize=8)
    fig.suptitle("Decomposed layers")
    return _png(fig)


def plot_latency(latency: Mapping[str, Mapping[str, Any]] | None) -> bytes:
    """PNG with one panel per backend: mean latency (± stdev) against batch size, paired speedups annotated.

    Args:
        latency: ``report["latency"]`` (``{backend: {"BATCH": block}}``) or None.

    Returns:
        PNG bytes (a placeholder figure when nothing was measured).
    """
    from matplotlib.ticker import ScalarFormatter

    backends = list(latency or {})
    fig = _figure(max(5.0, 4.5 * len(backends)), 4.0)
    if not backends:
        fig.text(0.5, 0.5, "no latency measured", ha="center", va="center")
        return _png(fig)
    axes = fig.subplots(1, len(backends), squeeze=False)[0]
    for ax, backend in zip(axes, backends, strict=True):
        per_batch = latency[backend]
        batches = list(per_batch)
        x = list(range(len(batches)))
        for which in ("original", "compressed"):
            stats = [per_batch[b][which] for b in batches]
            ax.errorbar(x, [s["mean"] for s in stats], yerr=[s["stdev"] for s in stats], marker="o", capsize=3,
                        label=which)
        # Batch sizes span orders of magnitude of latency; a log axis keeps batch 1 readable next to 256.
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        for v, b in zip(x, batches, strict=True):
            s = per_batch[b]["speedup"]
            ax.annotate(f"{s:.2f}x" if s is not None else "-", (v, per_batch[b]["compressed"]["mean"]),
                        ha="center", va="top", fontsize=8, xytext=(0, -8), textcoords="offset points")
        ax.set_xticks(x, batches)
        ax.set_xlim(-0.5, len(batches) - 0.5)
        ax.margins(y=0.2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("mean latency (ms per batch)")
        ax.set_title(f"{backend} (paired speedup under each pair)")
        ax.legend(fontsize=8)
    return _png(fig)
