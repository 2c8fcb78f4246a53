"""Benchmark: every factorization method at a matched budget, side by side on ResNet-18 / ResNet-50 (a table).

For each model (random weights, one seeded draw shared by all methods; speed does not depend on the values)
and each method, the one knob of a uniform plan is searched so that the model's reduction is as close as
possible to ``--goal`` (default 3×):

- ``ratio:F`` for tucker, tt (special), ttg (general TT), cp, svd (1×1 convs and Linear only) and ht2;
- ``svt:R`` for tucker-svt (Tucker-2 with the singular-value-threshold rank rule);
- ``coef_ratio`` for reorder (g = ``--groups``). Reordering folds back into dense layers on export, so it
  saves storage, not MACs: it is matched on its *storage* reduction (32-bit values + packed indices), always.

The reduction matched is MACs (macs_before / macs_after) or, with ``--match params``, parameters. The search
brackets the knob and narrows it by false position in log–log space (`bisect_knob`), with cheap compress
calls: Tucker ``iters=0``, CP ``cp_iters=--search-cp-iters`` (ranks, hence MACs and parameters, do not
depend on the iterations). Reorder's storage follows from its ranks alone (`tdexport.factorize.reorder_ranks`
/ `reorder_storage_ratio`), so its search factors nothing; the final plan's totals are checked against it.
A goal no knob value reaches is reported at the closest value found, marked ``(max)``.

Then one real compress at the value found (default iterations), timed: wall-clock seconds of that call and
the process CPU seconds (both threads; a busy machine shows as cpu < 2 × wall).

Columns: model, method, rule found, parameter reduction, MAC reduction (storage reduction for reorder),
decomposition seconds, Σ rel_error² and max rel_error over the decomposed layers (‖W − Ŵ‖/‖W‖ as measured by
each factorization), decomposed/kept layer counts, and per batch the ONNX Runtime CPU speedup: both models
exported with a fixed batch (`tdexport.export.onnx.export_onnx`, opset 18, simplified, parity-checked), timed
in paired ABBA rounds in one process (`tdexport.validate.latency.measure_paired`, intra-op threads
``--threads``, warm-up first). Speedup = original time / compressed time: the median of the per-round ratios,
with their [min–max].

Usage: python tools/bench_methods.py [--models resnet18,resnet50] [--batches 1,32]
       [--methods tucker,tt,ttg,cp,svd,ht2,reorder,tucker-svt] [--goal 3] [--match macs|params]
       [--json PATH] [--markdown] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from _table import table

import tdexport
from tdexport.export.onnx import export_onnx
from tdexport.factorize import reorder_ranks, reorder_storage_ratio
from tdexport.planner import compress, survey
from tdexport.runtime import make_runner
from tdexport.validate.latency import measure_paired
from tdexport.zoo import model_info


@dataclass(frozen=True)
class Method:
    """One column of methods: how to call `compress`, which knob is searched and how to make it cheap.

    Attributes:
        name: the row label (and ``--methods`` name).
        fmt: ``format=`` of `compress`.
        knob: ``ratio`` / ``svt`` (the rank rule ``knob:value``) or ``coef_ratio`` (reorder).
        options: extra `compress` keywords of the method.
        cheap: keywords that make a search call cheap without changing the ranks.
    """

    name: str
    fmt: str
    knob: str
    options: dict[str, Any] = field(default_factory=dict)
    cheap: dict[str, Any] = field(default_factory=dict)


def methods_table(search_cp_iters: int, groups: int) -> dict[str, Method]:
    """All benchmarked methods by name."""
    return {m.name: m for m in (
        Method("tucker", "tucker", "ratio", cheap={"iters": 0}),
        Method("tt", "tt", "ratio"),
        Method("ttg", "tt", "ratio", {"tt_type": "general"}),
        Method("cp", "cp", "ratio", cheap={"cp_iters": search_cp_iters}),
        Method("svd", "svd", "ratio"),
        Method("ht2", "ht2", "ratio"),
        Method("reorder", "reorder", "coef_ratio", {"groups": groups}),
        Method("tucker-svt", "tucker", "svt", cheap={"iters": 0}),
    )}


@dataclass
class Row:
    """One method's result on one model (reductions in ×, times in s, errors relative)."""

    model: str
    method: str
    basis: str
    rule: str = ""
    value: float = 0.0
    reached: bool = True
    search_calls: int = 0
    search_seconds: float = 0.0
    params_red: float = 0.0
    macs_red: float = 0.0
    storage_red: float | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    load: float = 0.0
    calls: list[dict[str, float]] = field(default_factory=list)
    err2_sum: float = 0.0
    err_max: float = 0.0
    decomposed: int = 0
    kept: int = 0
    speed: dict[int, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    def matched(self) -> float:
        """The reduction that was matched to the goal."""
        return {"params": self.params_red, "macs": self.macs_red, "storage": self.storage_red or 0.0}[self.basis]


def reductions(plan: Any) -> dict[str, float]:
    """Parameter / MAC (and, for reorder, storage) reduction factors (before / after) of a plan's totals."""
    t = plan.totals
    out = {"params": t["params_before"] / t["params_after"], "macs": t["macs_before"] / t["macs_after"]}
    if "storage_bits_before" in t:
        out["storage"] = t["storage_bits_before"] / t["storage_bits_after"]
    return out


def reorder_storage_model(model: torch.nn.Module, shape: tuple[int, ...], groups: int) -> Callable[[float], float]:
    """Storage reduction of a uniform reorder plan as a function of coef_ratio, without factoring anything.

    Mirrors the planner: eligible layers (as `survey` says) with ranks from `reorder_ranks`; a layer whose
    reordered storage would not be smaller stays dense. The final compress's totals are checked against it.
    """
    plan = survey(model, format="reorder", input_shape=shape)
    sizes = [(math.prod(e.shape), e.reason.startswith("eligible")) for e in plan.layers]

    def reduction(coef_ratio: float) -> float:
        before = after = 0
        for numel, eligible in sizes:
            before += 32 * numel
            ratio = reorder_storage_ratio(numel, *reorder_ranks(numel, groups, coef_ratio)) if eligible else 1.0
            after += round(32 * numel * ratio) if ratio < 1 else 32 * numel
        return before / after

    return reduction


def bisect_knob(reduction_at: Callable[[float], float], goal: float, lo: float, hi: float, tol: float,
                rtol: float = 0.003, max_calls: int = 14) -> tuple[float, float, bool, int]:
    """The knob value in [lo, hi] whose reduction is closest (in log) to ``goal``.

    ``reduction_at`` falls as the knob grows (more rank, more kept coefficients). The crossing is bracketed
    and narrowed by false position in log–log space (the Illinois variant), where reduction ~ knob^-k is
    nearly a line, with bisection steps when an interpolation lands too near an end; it stops within
    ``rtol`` of the goal, at a bracket narrower than ``tol`` or after ``max_calls`` evaluations. The
    answer is the best of every value evaluated (steps need not be monotone: layers that stop saving are
    kept).

    Returns:
        (value, its reduction, whether the goal lies within the reachable range, calls made).
    """
    seen: dict[float, float] = {}

    def gap(x: float) -> float:
        x = round(x, 4)
        if x not in seen:
            seen[x] = reduction_at(x)
        return math.log(seen[x] / goal)

    g_hi = gap(hi)
    g_lo = gap(lo) if g_hi < 0 else 0.0
    reached = g_lo >= 0
    if reached and g_hi < 0:
        u_lo, u_hi, side = math.log(lo), math.log(hi), 0
        while len(seen) < max_calls and hi - lo > tol and min(abs(math.log(v / goal)) for v in seen.values()) > rtol:
            u = u_lo - g_lo * (u_hi - u_lo) / (g_hi - g_lo)
            if not u_lo + 0.05 * (u_hi - u_lo) < u < u_hi - 0.05 * (u_hi - u_lo):
                u = (u_lo + u_hi) / 2
            x = round(math.exp(u), 4)
            if x in seen:  # rounding met an earlier point: the bracket is as narrow as the knob resolves
                break
            g = gap(x)
            if g >= 0:
                lo, u_lo, g_lo = x, math.log(x), g
                g_hi = g_hi / 2 if side == -1 else g_hi  # Illinois: halve the end that stayed twice
                side = -1
            else:
                hi, u_hi, g_hi = x, math.log(x), g
                g_lo = g_lo / 2 if side == 1 else g_lo
                side = 1
    best = min(seen, key=lambda x: abs(math.log(seen[x] / goal)))
    return best, seen[best], reached, len(seen)


def dense_model(name: str, seed: int) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The seeded random-weight model and its (C, H, W) input."""
    torch.manual_seed(seed)
    return tdexport.create_model(name, weights="random"), tuple(model_info(name).input_shape)


def export_fixed(model: torch.nn.Module, path: Path, shape: tuple[int, ...], batch: int) -> Path:
    """Export ``model`` at a fixed batch to ``path`` (opset 18: the dynamo exporter's own, no fallback)."""
    export_onnx(model, path, input_shape=shape, batch=batch, opset=18, simplify=True)
    return path


def paired(orig: Path, comp: Path, shape: tuple[int, ...], batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Paired ABBA timing of two ONNX files on ORT-CPU; speedup = original / compressed (median, min, max)."""
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    round_size = args.round_size or (5 if batch < 8 else 2)
    with (make_runner("ort-cpu", orig, threads=args.threads) as a,
          make_runner("ort-cpu", comp, threads=args.threads) as b):
        p = measure_paired(a, b, x, warmup_s=args.warmup, iterations=args.rounds * round_size,
                           duration_s=args.duration, round_size=round_size)
    ratios = [o / c for o, c in p.round_medians if c > 0]
    return {"speedup": p.speedup, "min": min(ratios), "max": max(ratios), "rounds": p.rounds,
            "round_size": p.round_size, "original_ms": p.original.p50, "compressed_ms": p.compressed.p50}


def run_method(row: Row, method: Method, dense: torch.nn.Module, shape: tuple[int, ...], name: str,
               goal: float, args: argparse.Namespace, reuse: tuple[float, bool] | None = None) -> Any:
    """Search ``method``'s knob for ``goal`` (or take ``reuse`` = (value, reached)), then compress for real.

    The real compress runs ``args.repeat`` times; ``row.seconds`` is the fastest call's wall clock.
    """

    def call(value: float, cheap: bool) -> Any:
        opts = {**method.options, **(method.cheap if cheap else {})}
        if method.knob == "coef_ratio":
            return compress(dense, format=method.fmt, coef_ratio=value, input_shape=shape, model_name=name, **opts)
        return compress(dense, format=method.fmt, rank=f"{method.knob}:{value:g}", input_shape=shape,
                        model_name=name, **opts)

    t0 = time.perf_counter()
    predicted = None
    if reuse is not None:
        row.value, row.reached = reuse
    elif method.knob == "coef_ratio":
        reduction_at = reorder_storage_model(dense, shape, args.groups)
        row.value, predicted, row.reached, row.search_calls = bisect_knob(reduction_at, goal, 0.01, 1.0, args.tol)
    else:
        def reduction_at(value: float) -> float:
            return reductions(call(value, cheap=True).plan)[row.basis]
        row.value, predicted, row.reached, row.search_calls = bisect_knob(reduction_at, goal, 0.01, 1.0, args.tol)
    row.search_seconds = time.perf_counter() - t0
    row.rule = f"coef_ratio={row.value:g} g={args.groups}" if method.knob == "coef_ratio" else \
        f"{method.knob}:{row.value:g}"
    for _ in range(max(1, args.repeat)):
        result = None
        gc.collect()
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        result = call(row.value, cheap=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        row.calls.append({"seconds": wall, "cpu_seconds": cpu, "load": load})
        if len(row.calls) == 1 or wall < row.seconds:
            row.seconds, row.cpu_seconds, row.load = wall, cpu, load
    red = reductions(result.plan)
    row.params_red, row.macs_red, row.storage_red = red["params"], red["macs"], red.get("storage")
    if predicted is not None and abs(row.matched() / predicted - 1) > 1e-9:
        print(f"  warning: {row.method} searched reduction {predicted:.4f}× but the final plan has "
              f"{row.matched():.4f}×", flush=True)
    decomposed = [e for e in result.plan.layers if e.decision == "decomposed"]
    errs = [e.rel_error for e in decomposed if e.rel_error is not None]
    row.err2_sum, row.err_max = math.fsum(e * e for e in errs), max(errs, default=0.0)
    row.decomposed, row.kept = len(decomposed), len(result.plan.layers) - len(decomposed)
    return result


def cells(row: Row, batches: list[int]) -> list[str]:
    """Table cells of one row."""
    mark = "" if row.reached else " (max)"
    if row.error:
        return [row.model, row.method, row.rule or "-", "error: " + row.error[:60], *[""] * (6 + len(batches))]
    red = f"{row.macs_red:.2f}×" if row.basis != "storage" else f"{row.storage_red:.2f}× storage"
    params = f"{row.params_red:.2f}×"
    if row.basis == "params":
        params += mark
    else:
        red += mark
    speed = []
    for b in batches:
        s = row.speed.get(b)
        speed.append("-" if s is None else f"{s['speedup']:.2f}× [{s['min']:.2f}–{s['max']:.2f}]")
    return [row.model, row.method, row.rule, params, red, f"{row.seconds:.1f} ({row.cpu_seconds:.1f})",
            f"{row.load:.1f}", f"{row.err2_sum:.2f}", f"{row.err_max:.3f}", f"{row.decomposed}/{row.kept}", *speed]


def markdown(rows: list[list[str]]) -> str:
    """The same rows as a GitHub markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def summary(args: argparse.Namespace, load_start: tuple[float, ...], minutes: float) -> str:
    """The notes printed above the table."""
    basis = "MACs" if args.match == "macs" else "parameters"
    return (f"goal {args.goal:g}× {basis} (reorder: storage, it saves no MACs); (max) = goal not reachable, "
            f"closest shown. ORT {ort.__version__} CPU, {args.threads} intra-op threads, torch {torch.__version__}, "
            f"{os.cpu_count()} CPUs, load {load_start[0]:.1f} → {os.getloadavg()[0]:.1f}; {minutes:.1f} min.\n"
            + (f"knob values reused from {args.rules_from}. " if args.rules_from else "")
            + "decomp. s = wall clock of the final compress call"
            + (f" (fastest of {args.repeat})" if args.repeat > 1 else "")
            + " with its process CPU seconds in brackets, load = 1-min load average when it started; Σrel_err² / "
            "max over decomposed layers; speedup = original / compressed, median of paired ABBA round ratios "
            "[min–max].")


def write_json(args: argparse.Namespace, rows: list[Row], out: list[list[str]], minutes: float, notes: str) -> None:
    """Write rows, table and settings to ``--json`` (after every method too, so a long run keeps its rows)."""
    if not args.json:
        return
    payload = {"command": " ".join(["python", *sys.argv]), "settings": {**vars(args), "json": str(args.json)},
               "minutes": minutes, "notes": notes, "versions": {"onnxruntime": ort.__version__,
                                                                "torch": torch.__version__,
                                                                "python": platform.python_version()},
               "rows": [vars(r) for r in rows], "table": out}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--batches", default="1,32", help="ORT-CPU batches timed (fixed-batch exports)")
    ap.add_argument("--methods", default="tucker,tt,ttg,cp,svd,ht2,reorder,tucker-svt")
    ap.add_argument("--goal", type=float, default=3.0, help="reduction factor to match (×)")
    ap.add_argument("--match", choices=("macs", "params"), default="macs",
                    help="reduction matched to the goal (reorder is always matched on storage)")
    ap.add_argument("--groups", type=int, default=4, help="reorder's g")
    ap.add_argument("--search-cp-iters", type=int, default=2, help="CP ALS iterations of the search calls")
    ap.add_argument("--tol", type=float, default=0.004,
                    help="the search stops when the knob bracket is this narrow")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    ap.add_argument("--rounds", type=int, default=8, help="minimum paired rounds per measurement")
    ap.add_argument("--round-size", type=int, default=0, help="calls per half-round (0: 5 below batch 8, else 2)")
    ap.add_argument("--duration", type=float, default=3.0, help="minimum timed seconds per measurement")
    ap.add_argument("--warmup", type=float, default=1.0, help="untimed warm-up seconds per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="real compress calls per method; the fastest is reported")
    ap.add_argument("--rules-from", type=Path,
                    help="a --json file of an earlier run: its knob values are reused, no search")
    ap.add_argument("--no-latency", action="store_true", help="skip exports and timing")
    ap.add_argument("--json", type=Path, help="also write the rows and settings here")
    ap.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    ap.add_argument("--quick", action="store_true", help="resnet18, batch 1, 4 short rounds (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.models, args.batches, args.rounds, args.duration, args.warmup = "resnet18", "1", 4, 1.0, 0.3
    batches = [] if args.no_latency else [int(b) for b in args.batches.split(",")]
    known = methods_table(args.search_cp_iters, args.groups)
    names = args.methods.split(",")
    unknown = sorted(set(names) - set(known))
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {','.join(known)}")
    torch.set_num_threads(args.threads)
    reused: dict[tuple[str, str, str], tuple[float, bool]] = {}
    if args.rules_from:
        for r in json.loads(args.rules_from.read_text())["rows"]:
            if not r.get("error"):
                reused[(r["model"], r["method"], r["basis"])] = (r["value"], r["reached"])
    started, load_start = time.perf_counter(), os.getloadavg()
    head = ["model", "method", "rule found", "params red.", "MAC red.", "decomp. s (cpu s)", "load", "Σrel_err²",
            "max rel_err", "dec/kept", *[f"b{b} speedup [min–max]" for b in batches]]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as tmpdir:
        tmp = Path(tmpdir)
        for name in args.models.split(","):
            dense, shape = dense_model(name, args.seed)
            print(f"{name}: random weights (seed {args.seed}), input {shape}", flush=True)
            originals = {b: export_fixed(dense, tmp / f"{name}-orig-b{b}.onnx", shape, b) for b in batches}
            for mname in names:
                method = known[mname]
                row = Row(name, mname, "storage" if method.knob == "coef_ratio" else args.match)
                rows.append(row)
                try:
                    result = run_method(row, method, dense, shape, name, args.goal, args,
                                        reused.get((name, mname, row.basis)))
                except Exception as exc:  # noqa: BLE001 - one failing method must not lose the others' rows
                    row.error = f"{type(exc).__name__}: {exc}"
                    print(f"  {mname}: {row.error}", flush=True)
                    continue
                print(f"  {mname}: {row.rule} → {row.matched():.3f}× {row.basis} ({row.search_calls} search calls, "
                      f"{row.search_seconds:.0f} s), compress {row.seconds:.1f} s wall / {row.cpu_seconds:.1f} s cpu",
                      flush=True)
                for b in batches:
                    comp = export_fixed(result.model, tmp / f"{name}-{mname}-b{b}.onnx", shape, b)
                    row.speed[b] = paired(originals[b], comp, shape, b, args)
                    comp.unlink()
                    s = row.speed[b]
                    print(f"    b{b}: {s['speedup']:.2f}× [{s['min']:.2f}–{s['max']:.2f}] "
                          f"({s['original_ms']:.1f} → {s['compressed_ms']:.1f} ms, {s['rounds']} rounds)", flush=True)
                del result
                gc.collect()
                write_json(args, rows, [head] + [cells(r, batches) for r in rows],
                           (time.perf_counter() - started) / 60, "partial: the run is not finished")
            del dense
    minutes = (time.perf_counter() - started) / 60
    out = [head] + [cells(r, batches) for r in rows]
    notes = summary(args, load_start, minutes)
    print(f"\n{notes}\n")
    print(table(out))
    if args.markdown:
        print("\n" + markdown(out))
    write_json(args, rows, out, minutes, notes)


if __name__ == "__main__":
    main()
