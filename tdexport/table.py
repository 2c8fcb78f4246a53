"""Plain-text tables of plans for the terminal (no colour, fixed columns, stable for diffs)."""

from __future__ import annotations

from .plan import Plan

__all__ = ["human", "plan_table", "totals_line"]


def human(n: float) -> str:
    """Short human count: 25557032 → ``25.56M``, 4089184256 → ``4.09G``, 512 → ``512``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else "-"


def plan_table(plan: Plan, *, show_kept: bool = True) -> str:
    """Per-layer table: name, type, shape, method, ranks, params and MACs before → after, error, reason.

    A plan measured on a target adds a column of dense → chain time per call (ms) on it.
    """
    timed = any(e.dense_ms is not None for e in plan.layers)
    rows = [("layer", "type", "shape", "method", "ranks", "params", "MACs", "rel.err",
             *(["ms dense→chain"] if timed else []), "decision")]
    for e in plan.layers:
        if e.decision != "decomposed" and not show_kept:
            continue
        changed = e.decision == "decomposed"
        rows.append((
            e.name,
            e.type,
            "×".join(str(d) for d in e.shape),
            e.method or "-",
            ",".join(str(r) for r in e.ranks) or "-",
            f"{human(e.params_before)}→{human(e.params_after)}" if changed else human(e.params_before),
            f"{human(e.macs_before)}→{human(e.macs_after)}" if changed else human(e.macs_before),
            f"{e.rel_error:.4f}" if e.rel_error is not None else "-",
            *([f"{e.dense_ms:.3f}→{e.chain_ms:.3f}" if e.dense_ms is not None and e.chain_ms is not None else "-"]
              if timed else []),
            "decomposed" if changed else f"kept: {e.reason}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    lines.insert(1, "-" * min(max(len(x) for x in lines), 160))
    return "\n".join(lines)


def totals_line(plan: Plan) -> str:
    """One-line totals: parameters and MACs before → after with their reduction factors.

    A budget rule adds its target and predicted / achieved (for ``latency:``, measured) reduction.
    """
    t = plan.totals
    n = sum(e.decision == "decomposed" for e in plan.layers)
    b = plan.budget
    budget = ""
    if b:
        achieved = f"{b['achieved']:.2f}x" if b.get("achieved") else "-"
        what = "measured speedup" if b["metric"] == "latency" else f"{b['metric']} reduction"
        budget = (f"; budget {b['rule']}: {what} {achieved} (predicted {b['predicted']:.2f}x)"
                  + (f" on {b['target_backend']} b{b['target_batch']}" if b.get("target_backend") else ""))
    return (
        f"{plan.model} {plan.format} [{plan.rank_rule or 'dense'}]: {n}/{len(plan.layers)} layers decomposed; "
        f"params {human(t['params_before'])} → {human(t['params_after'])} "
        f"({_ratio(t['params_before'], t['params_after'])} smaller); "
        f"MACs {human(t['macs_before'])} → {human(t['macs_after'])} "
        f"({_ratio(t['macs_before'], t['macs_after'])} fewer) at input {'×'.join(map(str, plan.input_shape))}"
        + (f"; weight storage {_ratio(t['storage_bits_before'], t['storage_bits_after'])} smaller (reordered, "
           "runs dense)" if t.get("storage_bits_after") else "")
        + budget
    )
