"""Rendering of tools/reproduce.py's rows: the text / Markdown table, CSV, JSON and the accuracy-vs-MACs plot.

Every output is rendered in memory first, then each file is written to a temporary name and renamed into
place, so a failure leaves the previous files (or none), never a half-written one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tdexport._io import atomic_write_bytes

__all__ = ["COLUMNS", "FILES", "csv_text", "markdown", "plot_accuracy_vs_macs", "text_rows", "write_outputs"]

#: A row's keys, in CSV order. Ratios are original / compressed (x); top-1 in percent; dtop1 = compressed −
#: original top-1 (percentage points); speedup = the ORT-CPU paired speedup (x) at batch ``speedup_batch``.
COLUMNS = ("recipe", "seed", "model", "dataset", "method", "weights",
           "params_ratio_ours", "params_ratio_published", "macs_ratio_ours", "macs_ratio_published",
           "storage_ratio_ours", "storage_ratio_published", "top1_ours", "top1_published",
           "baseline_top1_ours", "baseline_top1_published", "dtop1_ours", "dtop1_published",
           "speedup", "speedup_batch", "status", "error", "exit_code", "weights_note", "accuracy_from",
           "published_note", "source", "file", "run_dir")
FILES = ("reproduce.md", "reproduce.csv", "reproduce.json", "accuracy_vs_macs.png")
_HEAD = ("recipe", "seed", "model", "method", "params ours", "params pub.", "MACs ours", "MACs pub.",
         "storage ours", "storage pub.", "top-1 ours", "top-1 pub.", "Δtop-1 ours", "Δtop-1 pub.",
         "speedup ort-cpu", "status")


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _status(row: Mapping[str, Any], limit: int) -> str:
    if row.get("error") is None:
        return row["status"]
    error = str(row["error"])
    text = error if error.startswith(row["status"]) else f"{row['status']}: {error}"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def text_rows(rows: Sequence[Mapping[str, Any]], *, markdown: bool) -> list[list[str]]:
    """The table as strings, header first: ratios ``2.71x``, top-1 ``91.50``, changes ``-0.50``, missing ``-``.

    Args:
        rows: the tool's rows (keys of `COLUMNS`).
        markdown: longer status cells (Markdown wraps them; a terminal does not).
    """
    out = [list(_HEAD)]
    for r in rows:
        speed = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x (b{r['speedup_batch']})"
        out.append([r["recipe"], r["seed"], r["model"], r["method"],
                    _x(r["params_ratio_ours"]), _x(r["params_ratio_published"]),
                    _x(r["macs_ratio_ours"]), _x(r["macs_ratio_published"]),
                    _x(r["storage_ratio_ours"]), _x(r["storage_ratio_published"]),
                    _pct(r["top1_ours"]), _pct(r["top1_published"]), _pts(r["dtop1_ours"]),
                    _pts(r["dtop1_published"]), speed, _status(r, 200 if markdown else 60)])
    return out


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """reproduce.md: the table, how it was made, then per-recipe notes (weights, accuracy basis, paper) and errors.

    Args:
        rows: the tool's rows.
        meta: ``command``, ``created`` (UTC ISO 8601), ``dry_run``, ``runs``, ``recipes_dir``, ``complete``.
    """
    cells = text_rows(rows, markdown=True)
    lines = ["# Published vs ours", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in cells[0]) + " |")
    lines.append("|" + "|".join("---" if i < 4 or i == len(cells[0]) - 1 else "---:"
                                for i in range(len(cells[0]))) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in cells[1:]]
    mode = ("dry run: plans only (no data, no training), so accuracy and speedup are not measured" if meta["dry_run"]
            else f"full runs in {meta['runs']}/NAME")
    lines += ["", f"Made by `{meta['command']}` on {meta['created']} ({mode}; recipes from {meta['recipes_dir']})."
              + ("" if meta.get("complete", True) else " Incomplete: the tool stopped before the last recipe."),
              "", "Reductions are original / compressed; top-1 in percent; Δtop-1 = compressed − original top-1 "
                  "(points; published: the paper's top-1 − its baseline); speedup: ONNX Runtime CPU, paired "
                  "median of per-round ratios at the recipe's first batch size."]
    notes = []
    for r in rows:
        facts = []
        if r.get("weights_note"):
            facts.append(f"weights fallback: {r['weights_note']}")
        if r.get("accuracy_from"):
            facts.append(f"our accuracy: {r['accuracy_from']}")
        if r.get("published_note"):
            facts.append(f"published note: {r['published_note']}")
        if r.get("source"):
            facts.append(f"source: {r['source']}")
        if facts:
            notes.append(f"- **{r['recipe']}** — " + "; ".join(facts))
    if notes:
        lines += ["", "## Notes", "", *notes]
    failures = [f"- **{r['recipe']}** ({r['status']}, exit {r['exit_code']}): {r['error']}" for r in rows
                if r.get("error") is not None]
    if failures:
        lines += ["", "## Failures", "", *failures]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """reproduce.csv: a header of `COLUMNS`, one line per row; numbers at full precision, an empty cell for None."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # None → "" and float → repr (round-trips exactly)
    return buf.getvalue()


def plot_accuracy_vs_macs(rows: Sequence[Mapping[str, Any]], *, dry_run: bool) -> bytes:
    """PNG of top-1 (percent) against MAC reduction (x, log axis), one colour per recipe.

    Ours are filled circles at (our MAC reduction, our top-1), the paper's hollow ones at (its MAC reduction,
    its top-1) when it reports both, joined by a dotted line. A dry run has no accuracy of ours: its filled
    circles sit at the *published* top-1 over our planned MAC reduction, as the title says. A placeholder
    figure when no row has a point.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import ScalarFormatter

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(fig)  # attached directly: no pyplot, no global backend switch
    ax = fig.subplots()
    plotted = 0
    for i, r in enumerate(rows):
        colour = f"C{i % 10}"  # the default colour cycle: one colour per recipe, ours and theirs alike
        y_ours = r["top1_published"] if dry_run else r["top1_ours"]
        ours = (r["macs_ratio_ours"], y_ours) if r["macs_ratio_ours"] is not None and y_ours is not None else None
        theirs = (r["macs_ratio_published"], r["top1_published"]) \
            if r["macs_ratio_published"] is not None and r["top1_published"] is not None else None
        if ours and theirs:
            ax.plot([ours[0], theirs[0]], [ours[1], theirs[1]], ":", color=colour, linewidth=1)
        if theirs:
            ax.scatter([theirs[0]], [theirs[1]], s=60, facecolors="none", edgecolors=colour, linewidths=1.5)
        if ours:
            ax.scatter([ours[0]], [ours[1]], s=40, color=colour)
        if ours or theirs:
            plotted += 1
            x, y = ours or theirs
            ax.annotate(r["recipe"], (x, y), fontsize=7, xytext=(5, 3), textcoords="offset points", color=colour)
    if not plotted:
        fig.text(0.5, 0.5, "no recipe has both a MAC reduction and a top-1 to plot", ha="center", va="center")
        ax.set_axis_off()
    else:
        # Reductions run from 1x (reordering) to 10x and more; a log axis spaces them evenly.
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("MAC reduction (original / compressed, x)")
        ax.set_ylabel("top-1 (%)")
        ax.grid(True, which="both", alpha=0.3)
        ours_label = "published top-1 at our planned MAC reduction" if dry_run else "ours"
        ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color="gray", label=ours_label),
                           Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="gray",
                                  label="published")], fontsize=8)
    ax.set_title("Dry run: published top-1 vs our planned MAC reduction (our accuracy not measured)" if dry_run
                 else "Top-1 vs MAC reduction: ours (filled) and published (hollow)", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_outputs(out: Path, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[Path]:
    """Render all of `FILES` in memory, then write each into ``out`` (created) atomically; returns their paths."""
    rows = [{c: r.get(c) for c in COLUMNS} for r in rows]
    payload = {
        "reproduce.md": markdown(rows, meta).encode(),
        "reproduce.csv": csv_text(rows).encode(),
        "reproduce.json": (json.dumps({**meta, "columns": list(COLUMNS), "rows": rows}, indent=2) + "\n").encode(),
        "accuracy_vs_macs.png": plot_accuracy_vs_macs(rows, dry_run=bool(meta["dry_run"])),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, data in payload.items():
        atomic_write_bytes(out / name, data)
    return [out / name for name in payload]
