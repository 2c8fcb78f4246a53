"""The validation report: report.json (versioned schema), report.md, two PNG plots and a terminal table.

`build_report` turns plain measurements into one JSON-ready dict; `write_report` renders every file in
memory first and only then writes each with a temporary name and `os.replace`, so a failure (say an
unserialisable value) leaves no file, and a reader never sees a half-written one. Importing this module
does not import torch or matplotlib.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..plan import Plan

__all__ = [
    "SCHEMA_VERSION",
    "SLOW_SPEEDUP_FRACTION",
    "build_report",
    "environment_info",
    "headline_table",
    "headline_values",
    "write_report",
]

SCHEMA_VERSION = 1
# Below this fraction of the MAC reduction, the measured speedup earns a warning: the factorized layers'
# extra kernels and memory traffic are eating most of the arithmetic saved.
SLOW_SPEEDUP_FRACTION = 0.5
FILES = {"json": "report.json", "markdown": "report.md", "plot_layers": "plot_layers.png",
         "plot_latency": "plot_latency.png"}
_LAYER_KEYS = ("name", "type", "shape", "decision", "method", "ranks", "params_before", "params_after",
               "macs_before", "macs_after", "rel_error", "reason")
_STAT_KEYS = ("count", "mean", "stdev", "p50", "p90", "p95", "p99", "throughput")
_PARITY_KEYS = ("max_abs_err", "rel_l2_err", "cosine", "top1_agreement")


# --------------------------------------------------------------------------------------------- building


def _as_dict(obj: Any) -> dict[str, Any] | None:
    """A result object (``to_dict()``), dataclass or mapping as a plain dict; None stays None."""
    if obj is None:
        return None
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    if isinstance(obj, Mapping):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"expected a mapping or an object with to_dict(), got {type(obj).__name__}")


def _clean(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python numbers, tuples to lists, NaN/±inf to None (JSON has none).

    Unknown objects are left in place so that serialising them fails loudly instead of being stringified.
    """
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ratio(before: float | None, after: float | None) -> float | None:
    return before / after if before is not None and after else None


def _pair(original: float | None, compressed: float | None) -> dict[str, Any]:
    return {"original": original, "compressed": compressed, "ratio": _ratio(original, compressed)}


def _version(*distributions: str) -> str | None:
    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(*, threads: Mapping[str, Any] | None = None, device: str = "cpu",
                     providers: Sequence[str] | None = None) -> dict[str, Any]:
    """Versions and hardware the measurements were taken with, for ``report["environment"]``.

    Package versions come from the installed distributions' metadata, so nothing heavy is imported;
    TensorRT is None when not installed.

    Args:
        threads: what was pinned, e.g. the dict `tdexport.validate.latency.pin_threads` returns.
        device: the device measured on, e.g. ``cpu`` or ``cuda:0 (NVIDIA A100)``.
        providers: ONNX Runtime execution providers; None asks onnxruntime for the available ones.

    Returns:
        ``{python, platform, cpu, cpu_count, torch, torchvision, onnx, onnxruntime, tensorrt, threads,
        device, providers}``; versions are strings or None.
    """
    if providers is None:
        try:
            import onnxruntime

            providers = list(onnxruntime.get_available_providers())
        except ImportError:
            providers = []
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime-gpu", "onnxruntime"),
        "tensorrt": _version("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
        "threads": dict(threads) if threads is not None else None,
        "device": device,
        "providers": list(providers),
    }


def _accuracy_block(entry: Mapping[str, Any]) -> dict[str, Any]:
    orig, comp = _as_dict(entry["original"]), _as_dict(entry["compressed"])
    samples = entry.get("samples", orig.get("samples"))
    return {
        "original": {"top1": orig["top1"], "top5": orig["top5"]},
        "compressed": {"top1": comp["top1"], "top5": comp["top5"]},
        "top1_drop": orig["top1"] - comp["top1"],
        "dataset": entry.get("dataset"),
        "samples": samples,
    }


def _latency_blocks(latency: Mapping[str, Mapping[Any, Any]] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for backend, per_batch in (latency or {}).items():
        out[backend] = {}
        for batch in sorted(per_batch, key=int):
            block = _as_dict(per_batch[batch])
            out[backend][str(int(batch))] = {
                "original": dict(block["original"]),
                "compressed": dict(block["compressed"]),
                "speedup": block["speedup"],
                "speedup_spread": list(block["speedup_spread"]),
                "rounds": block["rounds"],
            }
    return out


def _layer_rows(plan: Plan | Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if plan is None:
        return []
    layers = plan["layers"] if isinstance(plan, Mapping) else plan.layers
    rows = []
    for entry in layers:
        data = entry if isinstance(entry, Mapping) else dataclasses.asdict(entry)
        rows.append({key: data.get(key) for key in _LAYER_KEYS})
    return rows


def headline_values(*, accuracy: Mapping[str, Mapping[str, Any]] | None = None,
                    latency: Mapping[str, Mapping[Any, Any]] | None = None, parity: Any = None,
                    backend: str | None = None, batch: int | None = None) -> dict[str, Any]:
    """The three numbers the gates judge, taken the same way the report's headline takes them.

    Args:
        accuracy: as for `build_report`.
        latency: as for `build_report`.
        parity: as for `build_report`.
        backend: the backend whose speedup and accuracy are the headline; default the first latency
            backend (for accuracy: that backend if measured there, else the first accuracy backend).
        batch: the batch size of the headline speedup; default the largest measured on that backend.

    Returns:
        ``{"backend": str | None, "batch": int | None, "speedup": × | None, "acc_drop": top-1 points
        (original − compressed) | None, "parity_err": relative L2 | None}``: feed the last three to
        `tdexport.validate.gates.evaluate_gates`.
    """
    values: dict[str, Any] = {"backend": None, "batch": None, "speedup": None, "acc_drop": None,
                              "parity_err": None}
    lat = _latency_blocks(latency)
    chosen = backend if backend is not None else next(iter(lat), None)
    if chosen in lat and lat[chosen]:
        key = str(batch) if batch is not None else max(lat[chosen], key=int)
        if key in lat[chosen]:
            values.update(backend=chosen, batch=int(key), speedup=_clean(lat[chosen][key]["speedup"]))
    if accuracy:
        acc_backend = chosen if chosen in accuracy else next(iter(accuracy))
        values["acc_drop"] = _accuracy_block(accuracy[acc_backend])["top1_drop"]
    par = _as_dict(parity)
    if par is not None:
        values["parity_err"] = _clean(par.get("rel_l2_err"))
    return values


def build_report(
    *,
    plan: Plan | Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    params: tuple[int, int] | None = None,
    macs: tuple[int, int] | None = None,
    accuracy: Mapping[str, Mapping[str, Any]] | None = None,
    accuracy_note: str | None = None,
    parity: Any = None,
    latency: Mapping[str, Mapping[int, Any]] | None = None,
    gates: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    warnings: Sequence[str] = (),
    headline: tuple[str, int] | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    """Assemble the report dict (schema version 1) from plain measurements; writes nothing.

    Args:
        plan: the compression `Plan` (or its plan.json dict): model info, params/MACs totals, layer table.
        model: extra or overriding model info, e.g. ``{"name": "resnet50", "weights": "random"}``.
        params: (original, compressed) parameter counts; overrides the plan's totals.
        macs: (original, compressed) multiply-accumulates per image; overrides the plan's totals.
        accuracy: ``{backend: {"original": Accuracy | {top1, top5, samples}, "compressed": same,
            "dataset": str}}`` (top-1/top-5 in percent); None when not measured.
        accuracy_note: why accuracy is None (e.g. ``"no --data given"``), or a remark on it.
        parity: a `ParityResult`-like object (``to_dict()``) or mapping with ``max_abs_err``, ``rel_l2_err``,
            ``cosine``, ``top1_agreement`` (missing ones become None; extra keys are kept); None when absent.
        latency: ``{backend: {batch: PairedLatency | PairedLatency.to_dict()}}`` (ms, images/s).
        gates: ``{name: Gate | {limit, value, passed}}`` from `tdexport.validate.gates.evaluate_gates`.
        environment: from `environment_info`, merged over a freshly collected one (None: collect).
        warnings: warnings from earlier stages (e.g. a backend that was skipped), listed first.
        headline: (backend, batch) of the headline speedup; default see `headline_values`.
        created: timestamp (UTC); default now.

    Returns:
        A JSON-ready dict with keys ``schema_version``, ``created`` (UTC ISO 8601), ``environment``,
        ``model``, ``params`` and ``macs`` (each ``{original, compressed, ratio}``, ratio = original /
        compressed), ``mac_reduction``, ``accuracy`` (``{backend: {original: {top1, top5}, compressed:
        {top1, top5}, top1_drop, dataset, samples}}`` or None), ``accuracy_note``, ``parity``, ``latency``
        (``{backend: {"BATCH": {original: {unit, count, mean, stdev, p50, p90, p95, p99, throughput},
        compressed: {...}, speedup, speedup_spread, rounds}}}``), ``headline`` (see `headline_values`),
        ``warnings`` (list of str), ``gates`` (``{name: {limit, value, passed}}``), ``gates_passed``
        (bool, or None without gates), ``units`` and ``layers`` (the per-layer table). Non-finite floats
        become None.
    """
    plan_data = _as_dict(plan) if plan is not None else None
    model_info: dict[str, Any] = {}
    totals: Mapping[str, Any] = {}
    if plan_data is not None:
        model_info = {"name": plan_data.get("model"), "format": plan_data.get("format"),
                      "rank_rule": plan_data.get("rank_rule"), "input_shape": plan_data.get("input_shape"),
                      "num_classes": plan_data.get("num_classes")}
        totals = plan_data.get("totals") or {}
    model_info.update(model or {})
    params = params or (totals.get("params_before"), totals.get("params_after"))
    macs = macs or (totals.get("macs_before"), totals.get("macs_after"))
    mac_reduction = _ratio(*macs)

    accuracy_out = {b: _accuracy_block(entry) for b, entry in accuracy.items()} if accuracy else None
    if accuracy_out is None and accuracy_note is None:
        accuracy_note = "accuracy was not measured"
    parity_out = None
    if parity is not None:
        par = _as_dict(parity)
        parity_out = {key: par.get(key) for key in _PARITY_KEYS} | par
    latency_out = _latency_blocks(latency)
    gates_out = {name: _as_dict(gate) for name, gate in (gates or {}).items()}

    notes = list(warnings)
    for backend, per_batch in latency_out.items():
        for batch, block in per_batch.items():
            speedup = block["speedup"]
            if not mac_reduction or speedup is None or not math.isfinite(speedup):
                continue
            if speedup / mac_reduction < SLOW_SPEEDUP_FRACTION:
                notes.append(
                    f"{backend} batch {batch}: measured speedup {speedup:.2f}x is only "
                    f"{speedup / mac_reduction:.0%} of the {mac_reduction:.2f}x MAC reduction (below "
                    f"{SLOW_SPEEDUP_FRACTION:.0%}): the extra kernels of the factorized layers cost more "
                    f"than the arithmetic saves on this backend")
    for backend, block in (accuracy or {}).items():
        n_orig = _as_dict(block["original"]).get("samples")
        n_comp = _as_dict(block["compressed"]).get("samples")
        if n_orig is not None and n_comp is not None and n_orig != n_comp:
            notes.append(f"{backend} accuracy: original evaluated on {n_orig} samples, compressed on {n_comp}")

    env = environment_info()
    env.update(environment or {})
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": (created or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "model": model_info,
        "params": _pair(*params),
        "macs": _pair(*macs),
        "mac_reduction": mac_reduction,
        "accuracy": accuracy_out,
        "accuracy_note": accuracy_note,
        "parity": parity_out,
        "latency": latency_out,
        "headline": headline_values(accuracy=accuracy, latency=latency, parity=parity,
                                    backend=headline[0] if headline else None,
                                    batch=headline[1] if headline else None),
        "warnings": notes,
        "gates": gates_out,
        "gates_passed": all(g["passed"] for g in gates_out.values()) if gates_out else None,
        "units": {"latency": "ms per batch", "throughput": "images/s", "accuracy": "percent",
                  "top1_drop": "percentage points", "macs": "multiply-accumulates per image"},
        "layers": _layer_rows(plan_data),
    }
    return _clean(report)


# --------------------------------------------------------------------------------------------- rendering


def _count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def _num(x: float | None, fmt: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{fmt}}{suffix}"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.2f}" if x >= 1 else f"{x:.3f}"


def _before_after(before: float | None, after: float | None) -> str:
    return _count(before) if before == after else f"{_count(before)} → {_count(after)}"


def _speedup(block: Mapping[str, Any]) -> str:
    low, high = block["speedup_spread"]
    if block["speedup"] is None:
        return "-"
    return f"{block['speedup']:.2f}x ({_num(low)}-{_num(high)}, {block['rounds']} rounds)"


def _headline_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, original, compressed, change) rows shared by the Markdown and terminal tables."""
    rows = []
    for key, label, verb in (("params", "parameters", "fewer"), ("macs", "MACs / image", "fewer")):
        pair = report.get(key) or {}
        ratio = pair.get("ratio")
        rows.append((label, _count(pair.get("original")), _count(pair.get("compressed")),
                     f"{ratio:.2f}x {verb}" if ratio else "-"))
    if report.get("accuracy"):
        for backend, acc in report["accuracy"].items():
            where = f"{backend}, {acc.get('dataset') or 'data'}, n={acc.get('samples')}"
            for k in ("top1", "top5"):
                drop = acc["original"][k] - acc["compressed"][k]
                rows.append((f"{'top-1' if k == 'top1' else 'top-5'} % ({where})", _num(acc["original"][k]),
                             _num(acc["compressed"][k]), f"{-drop:+.2f} pt"))
    else:
        rows.append(("top-1 %", "-", "-", report.get("accuracy_note") or "not measured"))
    for backend, per_batch in (report.get("latency") or {}).items():
        for batch, block in per_batch.items():
            o, c = block["original"], block["compressed"]
            rows.append((f"latency ms p50 / mean ({backend}, batch {batch})", f"{_ms(o['p50'])} / {_ms(o['mean'])}",
                         f"{_ms(c['p50'])} / {_ms(c['mean'])}", _speedup(block)))
    return rows


def headline_table(report: Mapping[str, Any]) -> str:
    """Plain-text headline table for the terminal: params, MACs, top-1/top-5, latency per backend and batch.

    Args:
        report: a dict from `build_report` (or a loaded report.json).

    Returns:
        Fixed-width lines (no colour): metric, original, compressed, change; latency in ms per batch
        (p50 / mean), speedup as × with its per-round spread, then any warnings and gate results.
    """
    rows = [("", "original", "compressed", "change")] + _headline_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    for name, gate in (report.get("gates") or {}).items():
        lines.append(f"gate {name}: {'PASS' if gate['passed'] else 'FAIL'} (value {_num(gate['value'], '.4g')}, "
                     f"limit {gate['limit']:.4g})")
    lines.extend(f"warning: {w}" for w in report.get("warnings") or [])
    return "\n".join(lines)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _markdown(report: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> str:
    model = report.get("model") or {}
    title = model.get("name") or "model"
    details = ", ".join(str(model[k]) for k in ("format", "rank_rule") if model.get(k))
    out = [f"# tdexport report: {title}" + (f" ({details})" if details else ""), "",
           f"Created {report.get('created')} · schema {report.get('schema_version')}", "", "## Headline", ""]
    out += _md_table(("metric", "original", "compressed", "change"), _headline_rows(report))
    if report.get("accuracy") is None:
        out += [f"Accuracy not reported: {report.get('accuracy_note')}.", ""]
    elif report.get("accuracy_note"):
        out += [f"Note: {report['accuracy_note']}", ""]

    out += ["## Gates", ""]
    gates = report.get("gates") or {}
    if gates:
        out += _md_table(("gate", "limit", "value", "result"),
                         [(n, f"{g['limit']:.4g}", _num(g["value"], ".4g", "") if g["value"] is not None
                           else "unavailable", "**PASS**" if g["passed"] else "**FAIL**") for n, g in gates.items()])
    else:
        out += ["No gates requested.", ""]

    out += ["## Parity", ""]
    parity = report.get("parity")
    if parity:
        keys = [*_PARITY_KEYS, *(k for k in parity if k not in _PARITY_KEYS)]
        values = [parity.get(k) for k in keys]
        out += _md_table(keys, [[f"{v:.6g}" if isinstance(v, float) else "-" if v is None else v for v in values]])
    else:
        out += ["Parity not measured.", ""]

    out += ["## Warnings", ""]
    out += [f"- {w}" for w in report.get("warnings") or []] or ["None."]
    out += [""]

    if report.get("latency"):
        out += ["## Latency detail (ms per batch; throughput in images/s)", ""]
        rows = []
        for backend, per_batch in report["latency"].items():
            for batch, block in per_batch.items():
                for which in ("original", "compressed"):
                    s = block[which]
                    rows.append([backend, batch, which, s["count"], *(_ms(s[k]) for k in _STAT_KEYS[1:-1]),
                                 _num(s["throughput"], ".1f")])
        out += _md_table(["backend", "batch", "model", *_STAT_KEYS[:-1], "throughput"], rows)

    env = report.get("environment") or {}
    out += ["## Environment", ""]
    out += [f"- {k}: {v}" for k, v in env.items()] + [""]

    out += ["## Layers", ""]
    if layers:
        rows = [[e["name"], e["type"], "x".join(map(str, e["shape"] or [])), e["decision"], e["method"] or "-",
                 ",".join(map(str, e["ranks"] or [])) or "-",
                 _before_after(e["params_before"], e["params_after"]), _before_after(e["macs_before"], e["macs_after"]),
                 _num(e["rel_error"], ".4f"),
                 e["reason"]] for e in layers]
        out += _md_table(("layer", "type", "shape", "decision", "method", "ranks", "params", "MACs", "rel. error",
                          "reason"), rows)
    else:
        out += ["No per-layer plan.", ""]
    return "\n".join(out)


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


def _plot_layers(layers: Sequence[Mapping[str, Any]]) -> bytes:
    """Horizontal bars per decomposed layer: MACs before/after and ranks against the full mode sizes."""
    done = [e for e in layers if e["decision"] == "decomposed"]
    fig = _figure(12, max(3.0, 0.3 * len(done) + 1.5))
    if not done:
        fig.text(0.5, 0.5, "no decomposed layers", ha="center", va="center")
        return _png(fig)
    ax_macs, ax_ranks = fig.subplots(1, 2, sharey=True)
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
    fig.suptitle("Decomposed layers")
    return _png(fig)


def _plot_latency(latency: Mapping[str, Mapping[str, Any]] | None) -> bytes:
    """One panel per backend: mean latency (± stdev) against batch size for both models, speedups annotated."""
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
        ax.set_title(f"{backend} (speedup under each pair)")
        ax.legend(fontsize=8)
    return _png(fig)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; a run folder is meant to be read by others too.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    layers = _layer_rows(plan) if plan is not None else list(report.get("layers") or [])
    contents = {
        "json": text.encode(),
        "markdown": (_markdown(report, layers) + "\n").encode(),
        "plot_layers": _plot_layers(layers),
        "plot_latency": _plot_latency(report.get("latency")),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, data in contents.items():
        paths[key] = out / FILES[key]
        _atomic_write(paths[key], data)
    return paths
