"""The speed part of the report: warnings on measured speed, and what the plan's target predicted.

A plan compressed with a target (``--target BACKEND[:BATCH]``) carries per-layer times of the dense layer and of
its factor chain on that runtime; `target_block` sums them into the layer time the plan expected to save and
sets the whole-model speedup the plan predicted (``latency:`` rules) beside the one ``validate`` measured on
the same backend and batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DRIFT_WARN_FRACTION", "SLOW_SPEEDUP_FRACTION", "latency_warnings", "target_block"]

# Below this fraction of the MAC reduction, the measured speedup earns a warning: the factorized layers'
# extra kernels and memory traffic are eating most of the arithmetic saved.
SLOW_SPEEDUP_FRACTION = 0.5
# When the ratio of the p50s and the paired speedup differ by more than this fraction, latency drifted
# during the run; the warning says which of the two numbers to trust, so they are not read as a contradiction.
DRIFT_WARN_FRACTION = 0.2


def latency_warnings(latency: Mapping[str, Mapping[str, Any]], mac_reduction: float | None) -> list[str]:
    """Warnings on measured speed: slower than the original, far below the MAC reduction, drift.

    Args:
        latency: ``report["latency"]`` blocks (``{backend: {"BATCH": {speedup, p50_ratio, ...}}}``).
        mac_reduction: original ÷ compressed MACs, None when unknown.
    """
    notes = []
    for backend, per_batch in latency.items():
        for batch, block in per_batch.items():
            speedup, ratio = block["speedup"], block["p50_ratio"]
            if speedup is None or not math.isfinite(speedup):
                continue
            if speedup < 1:
                notes.append(
                    f"{backend} batch {batch}: the compressed model is SLOWER than the original ({speedup:.2f}x); "
                    f"compress with --target {backend}:{batch} to keep layers whose factor chain does not pay "
                    f"there dense, and gate with --min-speedup 1")
            if mac_reduction and speedup / mac_reduction < SLOW_SPEEDUP_FRACTION:
                notes.append(
                    f"{backend} batch {batch}: measured speedup {speedup:.2f}x is only "
                    f"{speedup / mac_reduction:.0%} of the {mac_reduction:.2f}x MAC reduction (below "
                    f"{SLOW_SPEEDUP_FRACTION:.0%}): the extra kernels of the factorized layers cost more "
                    f"than the arithmetic saves on this backend")
            if ratio is not None and math.isfinite(ratio) and speedup > 0 and \
                    abs(ratio / speedup - 1) > DRIFT_WARN_FRACTION:
                notes.append(
                    f"{backend} batch {batch}: the ratio of the p50s ({ratio:.2f}x) differs from the paired "
                    f"speedup ({speedup:.2f}x) by more than {DRIFT_WARN_FRACTION:.0%}: latency drifted during the "
                    f"run; the paired speedup cancels drift and is what the min_speedup gate uses")
    return notes


def target_block(plan: Mapping[str, Any] | None, layers: Sequence[Mapping[str, Any]],
                 latency: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any] | None:
    """The report's ``target`` entry, or None when the plan was not made with a target.

    Args:
        plan: plan.json as a dict (``options.target``, ``budget``).
        layers: per-layer rows with ``decision``, ``dense_ms`` and ``chain_ms``.
        latency: ``report["latency"]`` blocks.

    Returns:
        ``{backend, batch, layers_timed, dense_ms, planned_ms, saved_ms, predicted_speedup, measured_speedup,
        measured_by}``: ``dense_ms`` sums the timed layers' dense times, ``planned_ms`` the same layers as
        planned (chain time when decomposed, dense when kept), both per call at the target batch in ms, from
        standalone layer timings; ``predicted_speedup`` is the ``latency:`` rule's allocation (None for other
        rules), ``measured_speedup`` the paired whole-model speedup ``validate`` measured on the target's
        backend and batch (None when that pair was not run), and ``measured_by`` says by whom.
    """
    target = ((plan or {}).get("options") or {}).get("target")
    if not target:
        return None
    timed = [e for e in layers if e.get("dense_ms") is not None and e.get("chain_ms") is not None]
    dense = math.fsum(e["dense_ms"] for e in timed)
    planned = math.fsum(e["chain_ms"] if e["decision"] == "decomposed" else e["dense_ms"] for e in timed)
    budget = (plan or {}).get("budget") or {}
    block = ((latency or {}).get(target["backend"]) or {}).get(str(target["batch"])) or {}
    return {"backend": target["backend"], "batch": target["batch"], "layers_timed": len(timed),
            "dense_ms": dense, "planned_ms": planned, "saved_ms": dense - planned,
            "predicted_speedup": budget.get("predicted") if budget.get("metric") == "latency" else None,
            "search_measured_speedup": budget.get("measured") if budget.get("metric") == "latency" else None,
            "measured_speedup": block.get("speedup"),
            "measured_by": "validate, paired ABBA rounds on the exported models" if block else None}
