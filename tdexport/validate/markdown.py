"""Text renderings of a report dict: report.md (`render_markdown`) and the terminal table (`headline_table`).

Both read only the JSON-ready dict `tdexport.validate.report.build_report` returns (or a loaded
report.json of the same schema), so a report can be re-rendered without re-measuring anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .gates import GATES
from .latency import SPEEDUP_METHOD_TEXT
from .parity import PARITY_KEYS

__all__ = ["headline_table", "published_table", "render_markdown"]

_STAT_KEYS = ("count", "mean", "stdev", "p50", "p90", "p95", "p99", "throughput")


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
    """``3.20x paired (3.04-3.36, 12 rounds); p50 ratio 3.18x``: the gate's number first, then the other."""
    if block["speedup"] is None:
        text = "-"
    else:
        low, high = block["speedup_spread"]
        text = f"{block['speedup']:.2f}x paired ({_num(low)}-{_num(high)}, {block['rounds']} rounds)"
    ratio = block.get("p50_ratio")
    return text + (f"; p50 ratio {ratio:.2f}x" if ratio is not None else "")


def _parity_value(side: Mapping[str, Any] | None) -> str:
    return "not measured" if side is None else _num(side.get("rel_l2_err"), ".3g")


def _headline_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, original, compressed, change) rows shared by the Markdown and terminal tables."""
    rows = []
    for key, label, verb in (("params", "parameters", "fewer"), ("macs", "MACs / image", "fewer")):
        pair = report.get(key) or {}
        ratio = pair.get("ratio")
        rows.append((label, _count(pair.get("original")), _count(pair.get("compressed")),
                     f"{ratio:.2f}x {verb}" if ratio else "-"))
    storage = report.get("storage")
    if storage:  # reordered weights: stored smaller, run dense (params above count the trainable coefficients)
        rows.append(("weight storage, MiB (reorder: coefficients + packed index)",
                     _num(storage["original_bits"] / 8 / 2**20), _num(storage["compressed_bits"] / 8 / 2**20),
                     f"{storage['ratio']:.2f}x smaller"))
    if report.get("accuracy"):
        for backend, acc in report["accuracy"].items():
            where = f"{backend}, {acc.get('dataset') or 'data'}, n={acc.get('samples')}"
            for k in ("top1", "top5"):
                drop = acc["original"][k] - acc["compressed"][k]
                rows.append((f"{'top-1' if k == 'top1' else 'top-5'} % ({where})", _num(acc["original"][k]),
                             _num(acc["compressed"][k]), f"{-drop:+.2f} pt"))
    else:
        rows.append(("top-1 %", "-", "-", report.get("accuracy_note") or "not measured"))
    for backend, sides in (report.get("parity") or {}).items():
        rows.append((f"logit rel. L2 error vs torch fp32 ({backend})", _parity_value(sides.get("original")),
                     _parity_value(sides.get("compressed")), ""))
    for backend, per_batch in (report.get("latency") or {}).items():
        for batch, block in per_batch.items():
            o, c = block["original"], block["compressed"]
            rows.append((f"latency ms p50 / mean ({backend}, batch {batch})", f"{_ms(o['p50'])} / {_ms(o['mean'])}",
                         f"{_ms(c['p50'])} / {_ms(c['mean'])}", _speedup(block)))
    return rows


def headline_table(report: Mapping[str, Any]) -> str:
    """Plain-text headline table for the terminal: params, MACs, accuracy, parity, latency per backend and batch.

    Args:
        report: a dict from `tdexport.validate.report.build_report` (or a loaded report.json).

    Returns:
        Fixed-width lines (no colour): metric, original, compressed, change; latency in ms per batch
        (p50 / mean) with the paired speedup (×, per-round spread) and the ratio of the p50s; a line saying
        which speedup the gate uses; then gate results and warnings.
    """
    rows = [("", "original", "compressed", "change")] + _headline_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    if report.get("latency"):
        lines.append(report.get("speedup_definition") or SPEEDUP_METHOD_TEXT)
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


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _parity_section(report: Mapping[str, Any]) -> list[str]:
    out = ["## Parity", ""]
    parity = report.get("parity")
    if parity:
        out += [f"Compared: {report.get('parity_reference')}.", ""]
        rows = []
        for backend, sides in parity.items():
            for which in ("original", "compressed"):
                side = sides.get(which)
                rows.append([backend, which, *(["not measured"] + ["-"] * (len(PARITY_KEYS) - 1) if side is None
                                               else [_fmt(side.get(k)) for k in PARITY_KEYS])])
        out += _md_table(["backend", "model", *PARITY_KEYS], rows)
    else:
        out += ["Parity not measured.", ""]
    if report.get("parity_note"):
        out += [f"Note: {report['parity_note']}", ""]
    return out


def _latency_section(report: Mapping[str, Any]) -> list[str]:
    out = ["## Latency detail (ms per batch; throughput in images/s)", "",
           f"The headline speedup is the paired one: {report.get('speedup_definition') or SPEEDUP_METHOD_TEXT}. "
           "The p50 ratio (original p50 / compressed p50 over all runs) is shown for reference; the two differ "
           "when latency drifts during the run.", ""]
    rows = []
    for backend, per_batch in report["latency"].items():
        for batch, block in per_batch.items():
            low, high = block["speedup_spread"]
            rows.append([backend, batch, _num(block["speedup"], ".3f"), f"{_num(low, '.3f')}-{_num(high, '.3f')}",
                         _num(block.get("p50_ratio"), ".3f"), block["rounds"], block.get("round_size") or "-",
                         block.get("order") or "-"])
    out += _md_table(["backend", "batch", "speedup (paired, gated)", "spread", "p50 ratio", "rounds",
                      "runs per half-round", "order"], rows)
    rows = []
    for backend, per_batch in report["latency"].items():
        for batch, block in per_batch.items():
            for which in ("original", "compressed"):
                s = block[which]
                rows.append([backend, batch, which, s["count"], *(_ms(s[k]) for k in _STAT_KEYS[1:-1]),
                             _num(s["throughput"], ".1f")])
    out += _md_table(["backend", "batch", "model", *_STAT_KEYS[:-1], "throughput"], rows)
    return out


def _environment_section(env: Mapping[str, Any]) -> list[str]:
    out = ["## Environment", ""]
    for key, value in env.items():
        if key == "backends" and isinstance(value, Mapping):
            out.append("- backends (what each really ran on):" if value else "- backends: none run")
            for name, info in value.items():
                facts = ", ".join(f"{k} {', '.join(v) if isinstance(v, list) else v}" for k, v in info.items())
                out.append(f"  - {name}: {facts}")
        else:
            out.append(f"- {key}: {value}")
    return out + [""]


def render_markdown(report: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> str:
    """report.md: headline, gates, published vs ours, parity per backend, warnings, latency, environment, layers.

    Args:
        report: a dict from `tdexport.validate.report.build_report` (or a loaded report.json).
        layers: per-layer rows (``report["layers"]`` or the plan's).

    Returns:
        The Markdown text (no trailing newline).
    """
    model = report.get("model") or {}
    title = model.get("name") or "model"
    details = ", ".join(str(model[k]) for k in ("format", "rank_rule") if model.get(k))
    out = [f"# tdexport report: {title}" + (f" ({details})" if details else ""), "",
           f"Created {report.get('created')} · schema {report.get('schema_version')}", "", "## Headline", ""]
    out += _md_table(("metric", "original", "compressed", "change"), _headline_rows(report))
    if report.get("latency"):
        definition = report.get("speedup_definition") or SPEEDUP_METHOD_TEXT
        out += [f"{definition[:1].upper()}{definition[1:]}.", ""]
    if report.get("accuracy") is None:
        out += [f"Accuracy not reported: {report.get('accuracy_note')}.", ""]
    elif report.get("accuracy_note"):
        out += [f"Note: {report['accuracy_note']}", ""]

    out += ["## Gates", ""]
    gates = report.get("gates") or {}
    if gates:
        out += _md_table(("gate", "measures", "limit", "value", "result"),
                         [(n, GATES[n][0] if n in GATES else "-", f"{g['limit']:.4g}",
                           _num(g["value"], ".4g") if g["value"] is not None else "unavailable",
                           "**PASS**" if g["passed"] else "**FAIL**") for n, g in gates.items()])
    else:
        out += ["No gates requested.", ""]

    out += _published_section(report.get("published"))
    out += _parity_section(report)
    out += _precision_section(report.get("precision"))

    out += ["## Warnings", ""]
    out += [f"- {w}" for w in report.get("warnings") or []] or ["None."]
    out += [""]

    if report.get("latency"):
        out += _latency_section(report)

    out += _environment_section(report.get("environment") or {})
    out += _target_section(report.get("target"))

    out += ["## Layers", ""]
    if layers:
        timed = any(e.get("dense_ms") is not None for e in layers)
        rows = [[e["name"], e["type"], "x".join(map(str, e["shape"] or [])), e["decision"], e["method"] or "-",
                 ",".join(map(str, e["ranks"] or [])) or "-",
                 _before_after(e["params_before"], e["params_after"]), _before_after(e["macs_before"], e["macs_after"]),
                 _num(e["rel_error"], ".4f"),
                 *([_times(e)] if timed else []), e["reason"]] for e in layers]
        out += _md_table(("layer", "type", "shape", "decision", "method", "ranks", "params", "MACs", "rel. error",
                          *(["ms dense→chain"] if timed else []), "reason"), rows)
    else:
        out += ["No per-layer plan.", ""]
    return "\n".join(out)


def _times(e: Mapping[str, Any]) -> str:
    if e.get("dense_ms") is None or e.get("chain_ms") is None:
        return "-"
    return f"{e['dense_ms']:.3f}→{e['chain_ms']:.3f}"


def _target_section(target: Mapping[str, Any] | None) -> list[str]:
    """What the plan's target measurements expected, beside what validate measured."""
    if not target:
        return []
    where = f"{target['backend']} at batch {target['batch']}"
    out = ["## Target", "",
           f"Layer decisions were measured on {where}: {target['layers_timed']} layers timed standalone, "
           f"{_num(target['dense_ms'], '.3f')} ms dense → {_num(target['planned_ms'], '.3f')} ms as planned "
           f"({_num(target['saved_ms'], '.3f')} ms saved per call). Layers whose factor chain was not faster stay "
           "dense (see the reasons below).", ""]
    rows = []
    if target.get("predicted_speedup") is not None:
        rows.append(("predicted by the latency: allocation", f"{target['predicted_speedup']:.2f}x"))
    if target.get("search_measured_speedup") is not None:
        rows.append(("measured while planning (random factors, same structure)",
                     f"{target['search_measured_speedup']:.2f}x"))
    if target.get("measured_speedup") is not None:
        rows.append((f"measured by validate on {where}", f"{target['measured_speedup']:.2f}x"))
    if rows:
        out += _md_table(("whole-model speedup", "value"), rows)
    return out


def _precision_section(block: Mapping[str, Any] | None) -> list[str]:
    """Reduced precisions beside fp32: accuracy, agreement with fp32, logits cosine (and GPU latency)."""
    if not block:
        return []
    out = ["## Precision", "", f"{block['note'][:1].upper()}{block['note'][1:]}. Agreement on "
                               f"{block['agreement_inputs']}.", ""]
    rows = []
    for precision, entry in block.items():
        if not isinstance(entry, Mapping) or "backends" not in entry:
            continue
        name = precision + (f" ({entry['int8_target']})" if entry.get("int8_target") else "")
        for backend, result in entry["backends"].items():
            for label in ("original", "compressed"):
                side = result[label]
                latency = result.get("latency") or {}
                speed = ", ".join(f"b{b} {_num(v.get('speedup'), '.2f', '×')}" for b, v in latency.items()) or "-"
                rows.append((name, backend, label, _num(side.get("top1"), ".2f", " %"),
                             _num(100 * side["top1_agreement"], ".2f", " %"), _num(side["cosine"], ".6f"),
                             _num(result.get("top1_drop"), ".2f") if label == "compressed" else "",
                             speed if label == "compressed" else ""))
    out += _md_table(("precision", "backend", "model", "top-1", "top-1 agreement with fp32", "logits cosine",
                      "top-1 drop vs original fp32 (pts)", "speedup at this precision"), rows)
    return out


_PUBLISHED_LABELS = {"top1": "top-1 %", "top5": "top-5 %", "baseline_top1": "original top-1 %",
                     "params_ratio": "params reduction", "macs_ratio": "MACs reduction",
                     "storage_ratio": "storage reduction"}


def _published_rows(block: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, published, ours, difference) for every metric either side has."""
    rows = []
    for key, entry in (block.get("metrics") or {}).items():
        if entry.get("published") is None and entry.get("ours") is None:
            continue
        ratio = key.endswith("_ratio")
        fmt, unit = (".2f", "x") if ratio else (".2f", "")
        diff = entry.get("difference")
        rows.append((_PUBLISHED_LABELS.get(key, key), _num(entry.get("published"), fmt, unit),
                     _num(entry.get("ours"), fmt, unit),
                     "-" if diff is None else f"{diff:+.2f}{'x' if ratio else ' pt'}"))
    return rows


def published_table(report: Mapping[str, Any]) -> str:
    """Plain-text "published vs ours" table of ``report["published"]`` (empty string without one)."""
    block = report.get("published")
    if not block:
        return ""
    rows = [("", "published", "ours", "difference")] + _published_rows(block)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    if block.get("accuracy_from"):
        lines.append(f"our accuracy: {block['accuracy_from']}")
    if block.get("source"):
        lines.append(f"published: {block['source']}")
    return "\n".join(lines)


def _published_section(block: Mapping[str, Any] | None) -> list[str]:
    """The paper's numbers beside ours, with where each side comes from."""
    if not block:
        return []
    out = ["## Published vs ours", ""]
    if block.get("source"):
        out += [f"Published: {block['source']}.", ""]
    out += _md_table(("metric", "published", "ours", "difference"), _published_rows(block))
    if block.get("accuracy_from"):
        out += [f"Our accuracy: {block['accuracy_from']}; a different data set or protocol than the paper's makes "
                "the accuracy difference meaningless.", ""]
    if block.get("note"):
        out += [f"Note: {block['note']}", ""]
    return out
