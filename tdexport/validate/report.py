"""The validation report: report.json (versioned schema), report.md, two PNG plots and a terminal table.

`build_report` turns plain measurements into one JSON-ready dict; `write_report` renders every file in
memory first and only then writes each with a temporary name and `os.replace`, so a failure (say an
unserialisable value) leaves no file, and a reader never sees a half-written one. Rendering lives in
`tdexport.validate.markdown` (report.md, terminal table) and `tdexport.validate.plots` (PNGs); their
public names are importable from here too. Importing this module does not import torch or matplotlib.

Schema 2 (this version) differs from schema 1 in: ``parity`` is per backend and per model
(``{backend: {"original": {...} | None, "compressed": {...} | None}}``) with ``parity_reference`` and
``parity_note`` beside it; ``environment`` records the device and providers each backend really used
(``environment["backends"]``, see `tdexport.validate.environment`); each latency block adds
``p50_ratio``, ``speedup_method``, ``order``, ``round_size`` and ``warmup_calls``; ``headline`` adds
``p50_ratio``, ``speedup_method`` and ``parity_backend``; ``speedup_definition`` states what the headline
speedup is.
"""

from __future__ import annotations

import dataclasses
import math
import warnings as _warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .environment import environment_info
from .files import FILES, layer_rows, write_report
from .latency import SPEEDUP_METHOD_TEXT, p50_ratio
from .markdown import headline_table, render_markdown
from .parity import PARITY_KEYS
from .published import published_block, storage_block
from .speed_report import DRIFT_WARN_FRACTION, SLOW_SPEEDUP_FRACTION, latency_warnings, target_block

if TYPE_CHECKING:
    from ..plan import Plan

__all__ = [
    "DRIFT_WARN_FRACTION",
    "FILES",
    "SCHEMA_VERSION",
    "SLOW_SPEEDUP_FRACTION",
    "build_report",
    "environment_info",
    "headline_table",
    "headline_values",
    "parity_reference",
    "render_markdown",
    "write_report",
]

SCHEMA_VERSION = 2
_SIDES = ("original", "compressed")

# --------------------------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------------------------- blocks


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
            original, compressed = dict(block["original"]), dict(block["compressed"])
            warmup = block.get("warmup_calls")
            out[backend][str(int(batch))] = {
                "original": original,
                "compressed": compressed,
                "speedup": block["speedup"],
                "speedup_spread": list(block["speedup_spread"]),
                "rounds": block["rounds"],
                # Recomputed from the two p50s shown beside it, so the report cannot contradict itself.
                "p50_ratio": p50_ratio(original, compressed),
                "speedup_method": block.get("speedup_method"),
                "order": block.get("order"),
                "round_size": block.get("round_size"),
                "warmup_calls": list(warmup) if warmup is not None else None,
            }
            # GPU runners time on the device too (`measure_paired`): keep that basis and the host figures.
            for key in ("speedup_basis", "host_speedup", "host_speedup_spread", "device", "first_call_ms"):
                if block.get(key) is not None:
                    out[backend][str(int(batch))][key] = block[key]
    return out


def _parity_side(result: Any) -> dict[str, Any] | None:
    side = _as_dict(result)
    if side is None:
        return None
    return {key: side.get(key) for key in PARITY_KEYS} | side


def _parity_blocks(parity: Any) -> dict[str, dict[str, dict[str, Any] | None]] | None:
    """Normalise ``parity`` to ``{backend: {"original": {...} | None, "compressed": {...} | None}}``."""
    if parity is None:
        return None
    single = _as_dict(parity)
    if "rel_l2_err" in single:
        # Schema-1 callers passed the one comparison export_onnx makes: the compressed ONNX on ORT-CPU.
        _warnings.warn("build_report(parity=<one result>) is deprecated and will be removed in tdexport 0.2; "
                       "pass {backend: {'original': result | None, 'compressed': result | None}}",
                       DeprecationWarning, stacklevel=3)
        return {"ort-cpu": {"original": None, "compressed": _parity_side(single)}}
    out: dict[str, dict[str, dict[str, Any] | None]] = {}
    for backend, sides in single.items():
        if backend == "torch":
            raise ValueError("parity['torch']: torch fp32 eager is the reference every backend is compared with")
        if not isinstance(sides, Mapping) or not set(sides) <= set(_SIDES):
            raise ValueError(f"parity[{backend!r}] must be a mapping with keys 'original' and/or 'compressed', "
                             f"got {sides!r}")
        out[str(backend)] = {side: _parity_side(sides.get(side)) for side in _SIDES}
    return out


def parity_reference(parity: Mapping[str, Mapping[str, Any]] | None, inputs: str | None = None) -> str | None:
    """The sentence saying what the parity numbers compare, for ``report["parity_reference"]``.

    Args:
        parity: the normalised ``report["parity"]`` (``{backend: {"original", "compressed"}}``) or None.
        inputs: what the inputs were, e.g. ``"the first 8 test images of digits"``; None: just their count.

    Returns:
        E.g. ``"logits of each backend (ort-cpu) vs PyTorch fp32 eager of the same model (original vs
        original, compressed vs compressed) on the same 8 inputs; rel_l2_err = ..."``, or None without parity.
    """
    if not parity:
        return None
    counts = sorted({side["samples"] for sides in parity.values() for side in sides.values()
                     if side is not None and side.get("samples") is not None})
    if len(counts) == 1:
        how_many = f"{counts[0]} inputs"
    elif counts:
        how_many = f"inputs ({' or '.join(map(str, counts))} per comparison)"
    else:
        how_many = "inputs"
    return (f"logits of each backend ({', '.join(parity)}) vs PyTorch fp32 eager of the same model (original vs "
            f"original, compressed vs compressed) on the same {how_many}"
            f"{f' ({inputs})' if inputs else ''}; rel_l2_err = ||backend - torch||_2 / ||torch||_2 over all "
            f"logits, max_abs_err the largest absolute difference, cosine the worst per-sample cosine "
            f"similarity, top1_agreement the fraction of samples with the same argmax")


# --------------------------------------------------------------------------------------------- headline


def _worst_parity(parity: Mapping[str, Mapping[str, Any]] | None) -> tuple[float | None, str | None]:
    """(largest compressed rel_l2_err over backends, its backend); NaN when a measured one is NaN/missing."""
    worst: tuple[float | None, str | None] = (None, None)
    for backend, sides in (parity or {}).items():
        side = sides.get("compressed")
        if side is None:
            continue
        err = side.get("rel_l2_err")
        err = math.nan if err is None else float(err)
        if math.isnan(err):
            # An unmeasurable error must fail a max_parity_err gate, not be skipped by the max.
            return math.nan, backend
        if worst[0] is None or err > worst[0]:
            worst = (err, backend)
    return worst


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
        ``{"backend": str | None, "batch": int | None, "speedup": × | None, "p50_ratio": × | None,
        "speedup_method": str | None, "acc_drop": top-1 points (original − compressed) | None,
        "parity_err": relative L2 | None, "parity_backend": str | None}``. ``speedup`` is the median of
        paired per-round ratios (what ``min_speedup`` judges); ``p50_ratio`` the ratio of the two p50s at the
        same backend and batch, for reference. ``parity_err`` is the largest compressed-model ``rel_l2_err``
        over the backends in ``parity`` (each vs PyTorch fp32 eager; NaN when one of them is NaN), and
        ``parity_backend`` the backend it came from. Feed ``acc_drop``, ``speedup`` and ``parity_err`` to
        `tdexport.validate.gates.evaluate_gates`.
    """
    values: dict[str, Any] = {"backend": None, "batch": None, "speedup": None, "p50_ratio": None,
                              "speedup_method": None, "acc_drop": None, "parity_err": None, "parity_backend": None}
    lat = _latency_blocks(latency)
    chosen = backend if backend is not None else next(iter(lat), None)
    if chosen in lat and lat[chosen]:
        key = str(batch) if batch is not None else max(lat[chosen], key=int)
        if key in lat[chosen]:
            block = lat[chosen][key]
            values.update(backend=chosen, batch=int(key), speedup=_clean(block["speedup"]),
                          p50_ratio=_clean(block["p50_ratio"]), speedup_method=block["speedup_method"])
    if accuracy:
        acc_backend = chosen if chosen in accuracy else next(iter(accuracy))
        values["acc_drop"] = _accuracy_block(accuracy[acc_backend])["top1_drop"]
    values["parity_err"], values["parity_backend"] = _worst_parity(_parity_blocks(parity))
    return values


# --------------------------------------------------------------------------------------------- report


def build_report(
    *,
    plan: Plan | Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    params: tuple[int, int] | None = None,
    macs: tuple[int, int] | None = None,
    accuracy: Mapping[str, Mapping[str, Any]] | None = None,
    accuracy_note: str | None = None,
    parity: Mapping[str, Mapping[str, Any]] | None = None,
    parity_note: str | None = None,
    parity_inputs: str | None = None,
    latency: Mapping[str, Mapping[int, Any]] | None = None,
    gates: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    warnings: Sequence[str] = (),
    headline: tuple[str, int] | None = None,
    created: datetime | None = None,
    precision: Mapping[str, Any] | None = None,
    published: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the report dict (schema version 2) from plain measurements; writes nothing.

    Args:
        plan: the compression `Plan` (or its plan.json dict): model info, params/MACs totals, layer table.
        model: extra or overriding model info, e.g. ``{"name": "resnet50", "weights": "random"}``.
        params: (original, compressed) parameter counts; overrides the plan's totals.
        macs: (original, compressed) multiply-accumulates per image; overrides the plan's totals.
        accuracy: ``{backend: {"original": Accuracy | {top1, top5, samples}, "compressed": same,
            "dataset": str}}`` (top-1/top-5 in percent); None when not measured.
        accuracy_note: why accuracy is None (e.g. ``"no --data given"``), or a remark on it.
        parity: ``{backend: {"original": ParityResult | mapping | None, "compressed": same}}`` for every
            non-torch backend run, each side that model's logits on that backend compared with PyTorch fp32
            eager of the same model on the same inputs (`tdexport.validate.parity.compare_runners`); None (or
            a side None) when not measured. Mappings hold ``max_abs_err``, ``rel_l2_err``, ``cosine``,
            ``top1_agreement``, ``samples`` (missing ones become None; extra keys are kept). A single result
            (schema 1) is still read, as the compressed model on ort-cpu, with a DeprecationWarning.
        parity_note: why parity (or one side of it) is missing, or a remark on it; default when ``parity``
            is None: ``"parity was not measured"``.
        parity_inputs: what the parity inputs were, for ``parity_reference`` (e.g. ``"the first 8 test
            images of digits"``); None: only their count is given.
        latency: ``{backend: {batch: PairedLatency | PairedLatency.to_dict()}}`` (ms, images/s).
        gates: ``{name: Gate | {limit, value, passed}}`` from `tdexport.validate.gates.evaluate_gates`.
        environment: from `environment_info`, merged over a freshly collected one (None: collect).
        warnings: warnings from earlier stages (e.g. a backend that was skipped), listed first.
        headline: (backend, batch) of the headline speedup; default see `headline_values`.
        created: timestamp (UTC); default now.
        precision: reduced-precision results (`tdexport.validate.reduced.measure_precisions`); None when only
            fp32 was measured.
        published: what a paper reports for this experiment, shown beside our measurements (see
            `published_block`): ``{top1, top5, baseline_top1, params_ratio, macs_ratio, storage_ratio, note,
            source}``, any of them None; None: no ``published`` key in the report.

    Returns:
        A JSON-ready dict with keys ``schema_version`` (2), ``created`` (UTC ISO 8601), ``environment`` (see
        `environment_info`), ``model``, ``params`` and ``macs`` (each ``{original, compressed, ratio}``, ratio
        = original / compressed), ``mac_reduction``, ``accuracy`` (``{backend: {original: {top1, top5},
        compressed: {top1, top5}, top1_drop, dataset, samples}}`` or None), ``accuracy_note``, ``parity``
        (``{backend: {original: {max_abs_err, rel_l2_err, cosine, top1_agreement, samples} | None,
        compressed: ...}}`` or None), ``parity_reference`` (see `parity_reference`; None without parity),
        ``parity_note``, ``latency`` (``{backend: {"BATCH": {original: {unit, count, mean, stdev, p50, p90,
        p95, p99, throughput}, compressed: {...}, speedup, speedup_spread, rounds, p50_ratio,
        speedup_method, order, round_size, warmup_calls}}}``), ``speedup_definition`` (the sentence saying
        what ``speedup`` is and that the gate uses it), ``headline`` (see `headline_values`), ``warnings``
        (list of str), ``gates`` (``{name: {limit, value, passed}}``), ``gates_passed`` (bool, or None
        without gates), ``units``, ``layers`` (the per-layer table, with ``dense_ms`` / ``chain_ms`` measured on
        the plan's target) and ``target`` (`tdexport.validate.speed_report.target_block`; None when the plan
        had no target), ``precision`` (fp16 / int8 results beside fp32, see `tdexport.validate.reduced`; None
        when only fp32 was measured), and with ``published`` given, ``published`` (`published_block`).
        Non-finite floats become None.

    Raises:
        ValueError: ``parity`` has a ``torch`` entry (it is the reference) or a backend entry with keys
            other than ``original`` / ``compressed``.
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
    parity_out = _parity_blocks(parity)
    if parity_out is None and parity_note is None:
        parity_note = "parity was not measured"
    latency_out = _latency_blocks(latency)
    gates_out = {name: _as_dict(gate) for name, gate in (gates or {}).items()}

    notes = list(warnings) + latency_warnings(latency_out, mac_reduction)
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
        "storage": storage_block(totals),
        "accuracy": accuracy_out,
        "accuracy_note": accuracy_note,
        "parity": parity_out,
        "parity_reference": parity_reference(parity_out, parity_inputs),
        "parity_note": parity_note,
        "latency": latency_out,
        "speedup_definition": SPEEDUP_METHOD_TEXT if latency_out else None,
        "headline": headline_values(accuracy=accuracy, latency=latency, parity=parity_out,
                                    backend=headline[0] if headline else None,
                                    batch=headline[1] if headline else None),
        "warnings": notes,
        "gates": gates_out,
        "gates_passed": all(g["passed"] for g in gates_out.values()) if gates_out else None,
        "units": {"latency": "ms per batch", "throughput": "images/s", "accuracy": "percent",
                  "top1_drop": "percentage points", "macs": "multiply-accumulates per image",
                  "speedup": "x (original / compressed)"},
        "layers": layer_rows(plan_data),
        "target": target_block(plan_data, layer_rows(plan_data), latency_out),
        "precision": dict(precision) if precision else None,
    }
    if published is not None:
        report["published"] = published_block(published, report)
    return _clean(report)
