"""Numbers beside the usual report: a reordered model's weight storage, and a paper's published results.

`tdexport.validate.report.build_report` adds both blocks (``storage``, ``published``); recipes pass what their
seed published (`tdexport.recipes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PUBLISHED_METRICS", "published_block", "storage_block"]


def storage_block(totals: Mapping[str, Any]) -> dict[str, Any] | None:
    """Weight storage of a reordered model in bits (original, compressed, ratio); None for other formats."""
    before, after = totals.get("storage_bits_before"), totals.get("storage_bits_after")
    if not before or not after:
        return None
    return {"original_bits": before, "compressed_bits": after, "ratio": before / after}


#: Metrics a paper may report, in report order: (key, what it is).
PUBLISHED_METRICS = (("top1", "compressed top-1 %"), ("top5", "compressed top-5 %"),
                     ("baseline_top1", "original top-1 %"), ("params_ratio", "parameter reduction (x)"),
                     ("macs_ratio", "MAC reduction (x)"), ("storage_ratio", "weight storage reduction (x)"))


def published_block(published: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """A paper's numbers beside the same numbers measured in ``report``: the "published vs ours" block.

    Args:
        published: ``{top1, top5, baseline_top1 (percent), params_ratio, macs_ratio, storage_ratio (x, original
            / compressed), note, source}``; missing keys count as None (not reported).
        report: a report dict from `build_report` (or a loaded report.json): ours are its params / MACs /
            storage ratios and the accuracy on the headline backend (the first latency backend when it measured
            accuracy, else the first that did).

    Returns:
        ``{"source": str | None, "note": str | None, "accuracy_from": "BACKEND on DATASET (n=N)" | None,
        "metrics": {key: {"published": x | None, "ours": x | None, "difference": ours − published | None}}}``
        with the keys of `PUBLISHED_METRICS`. Accuracies are percent; a different data set or evaluation
        protocol (a digits run of an ImageNet recipe) makes the difference meaningless, and ``accuracy_from``
        says what ours was measured on.
    """
    accuracy = report.get("accuracy") or {}
    headline = (report.get("headline") or {}).get("backend")
    backend = headline if headline in accuracy else next(iter(accuracy), None)
    acc = accuracy.get(backend) if backend is not None else None
    storage = report.get("storage") or {}
    ours = {
        "top1": acc["compressed"]["top1"] if acc else None,
        "top5": acc["compressed"]["top5"] if acc else None,
        "baseline_top1": acc["original"]["top1"] if acc else None,
        "params_ratio": (report.get("params") or {}).get("ratio"),
        "macs_ratio": (report.get("macs") or {}).get("ratio"),
        "storage_ratio": storage.get("ratio"),
    }
    metrics = {}
    for key, _ in PUBLISHED_METRICS:
        theirs, mine = published.get(key), ours[key]
        metrics[key] = {"published": theirs, "ours": mine,
                        "difference": mine - theirs if theirs is not None and mine is not None else None}
    return {"source": published.get("source"), "note": published.get("note"),
            "accuracy_from": f"{backend} on {acc.get('dataset')} (n={acc.get('samples')})" if acc else None,
            "metrics": metrics}
