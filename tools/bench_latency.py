"""Benchmark: uniform vs budget vs runtime-aware rank rules on ONNX Runtime CPU, side by side (prints a table).

For random-weight ResNet-18 / ResNet-50 (latency does not depend on the values; one seeded draw per model,
shared by all its plans) and the digits ResNet-20 (``runs/digits-resnet20/model.safetensors`` when it exists,
else random weights), Tucker-2 plans:

- ``ratio:R``: uniform, R found so the MAC reduction is just above ``--macs-goal`` (or ``--ratio``);
- ``macs:3x``: the MAC budget, no target;
- ``macs:3x`` with ``target=ort-cpu:B``: layers whose measured factor chain is not faster stay dense;
- ``latency:Kx`` with ``target=ort-cpu:B`` (K per model, ``--latency``); an unreachable K is a row saying so.

Columns: MAC reduction; predicted speedup (``latency:``: the plan's ``budget["predicted"]`` from the layer
cost model, with the search's own end-to-end figure; ``macs:`` with a target: T / (T − Σ(dense − chain)) over
the decomposed layers, T the measured original at the target batch; untargeted: ``-``); measured speedup at
every batch (paired ABBA rounds of the real compressed model vs the original, median of per-round ratios
[spread]; ``*`` marks the plan's target batch); speedup ÷ MAC reduction; Σ rel_error² over the decomposed
layers (each ‖W − Ŵ‖²/‖W‖², as measured by the factorization); decomposed/kept layer counts; seconds of the
``compress`` call: untargeted, and for targeted plans cold (a fresh cost cache in a temporary folder) then
cached (a new `CostCache` on the same file) with the measurements each performed and, for ``latency:``,
the part before the end-to-end search started (layer profiling).

Usage: python tools/bench_latency.py [--models resnet18,resnet50,resnet20] [--batches 1,32] [--quick]
       [--round-to none,16] [--variants ratio,macs,macs-target,latency] [--latency resnet20=1.3,default=2]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _table import table

import tdexport
from tdexport.budget import BudgetUnreachable
from tdexport.cost import CostCache
from tdexport.runtime import make_runner
from tdexport.speed import export_fixed
from tdexport.validate.latency import measure_paired
from tdexport.zoo import model_info

DIGITS_CHECKPOINT = Path("runs/digits-resnet20/model.safetensors")
VARIANTS = ("ratio", "macs", "macs-target", "latency")


@dataclass
class Row:
    """One plan's figures (times in s, speedups in ×)."""

    model: str
    plan: str
    target: int | None
    round_to: int | str | None
    compressed: Any = None
    unreachable: float | None = None
    seconds: float = 0.0
    cached_seconds: float | None = None
    measured_cold: int | None = None
    measured_cached: int | None = None
    profile_seconds: float | None = None
    speed: dict[int, Any] = field(default_factory=dict)


def _mapping(text: str) -> dict[str, str]:
    """``a=1,default=2`` → {"a": "1", "default": "2"}; a bare value is the default."""
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.rpartition("=")
        out[key or "default"] = value
    return out


def _round_to(text: str) -> int | str | None:
    return None if text in ("none", "") else (text if text == "auto" else int(text))


def dense_model(name: str, seed: int) -> tuple[torch.nn.Module, tuple[int, ...], str]:
    """The dense model, its (C, H, W) input and where its weights came from."""
    shape = tuple(model_info(name).input_shape)
    if name == "resnet20" and DIGITS_CHECKPOINT.exists():
        return tdexport.create_model(name, weights=str(DIGITS_CHECKPOINT)), shape, f"checkpoint {DIGITS_CHECKPOINT}"
    torch.manual_seed(seed)
    return tdexport.create_model(name, weights="random"), shape, f"random weights (seed {seed})"


def compress(dense: torch.nn.Module, name: str, shape: tuple[int, ...], rank: str, **options: Any) -> Any:
    return tdexport.compress(dense, format="tucker", rank=rank, input_shape=shape, model_name=name, **options)


def mac_reduction(plan: Any) -> float:
    return plan.totals["macs_before"] / plan.totals["macs_after"]


def uniform_ratio(dense: torch.nn.Module, name: str, shape: tuple[int, ...], goal: float,
                  round_to: int | str | None) -> float:
    """The largest ratio (steps of 0.01) whose uniform plan cuts MACs by at least ``goal`` (bisection)."""
    lo, hi = 0.05, 0.95  # reduction(lo) ≥ goal is assumed; reduction falls as the ratio grows
    rt = None if round_to == "auto" else round_to
    while hi - lo > 0.011:
        mid = round((lo + hi) / 2, 2)
        if mac_reduction(compress(dense, name, shape, f"ratio:{mid}", iters=0, round_to=rt).plan) >= goal:
            lo = mid
        else:
            hi = mid
    return lo


def run_plan(row: Row, dense: torch.nn.Module, shape: tuple[int, ...], rank: str, cached_rerun: bool,
             tmp: Path) -> None:
    """Compress for ``row`` (cold, then cached for targeted plans), filling its timings and result."""
    options: dict[str, Any] = {"round_to": row.round_to}
    if row.target is None:
        t0 = time.perf_counter()
        row.compressed = compress(dense, row.model, shape, rank, **options)
        row.seconds = time.perf_counter() - t0
        return
    folder = Path(tempfile.mkdtemp(dir=tmp))
    for attempt in ("cold", "cached") if cached_rerun else ("cold",):
        cache = CostCache(folder / "costs.json")
        t0 = time.perf_counter()
        first_say: list[float] = []

        def say(_msg: str, t0: float = t0, first_say: list[float] = first_say) -> None:
            if not first_say:
                first_say.append(time.perf_counter() - t0)

        try:
            result = compress(dense, row.model, shape, rank, target=f"ort-cpu:{row.target}", cost_cache=cache,
                              say=say, **options)
        except BudgetUnreachable as err:
            result, row.unreachable = None, err.best
        seconds = time.perf_counter() - t0
        if attempt == "cold":
            row.seconds, row.measured_cold, row.compressed = seconds, cache.measured, result
            row.profile_seconds = first_say[0] if first_say else None
        else:
            row.cached_seconds, row.measured_cached = seconds, cache.measured
        print(f"  {row.model} {row.plan} @b{row.target} {attempt}: {seconds:.1f} s, {cache.measured} measured, "
              f"{cache.hits} cache hits" + (f", unreachable (best {row.unreachable:.2f}×)" if row.unreachable else ""),
              flush=True)


def measure(row: Row, originals: dict[int, Path], shape: tuple[int, ...], tmp: Path, args: argparse.Namespace) -> None:
    """Paired timing of the compressed model against the original at every batch."""
    for batch, orig in originals.items():
        comp = export_fixed(row.compressed.model, tmp, f"{row.model}-comp-b{batch}", shape, batch)
        x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
        with make_runner("ort-cpu", orig) as a, make_runner("ort-cpu", comp) as b:
            row.speed[batch] = measure_paired(a, b, x, warmup_s=args.warmup, iterations=args.iterations,
                                              duration_s=args.duration)
        comp.unlink()


def predicted(row: Row) -> str:
    plan = row.compressed.plan
    if row.plan.startswith("latency"):
        return f"{plan.budget['predicted']:.2f}× (search {plan.budget['measured']:.2f}×)"
    if row.target is None or row.target not in row.speed:
        return "-"
    saved = math.fsum(e.dense_ms - e.chain_ms for e in plan.layers
                      if e.decision == "decomposed" and e.dense_ms is not None and e.chain_ms is not None)
    total = row.speed[row.target].original.p50
    return f"{total / (total - saved):.2f}× (Σlayer)" if total > saved else "-"


def cells(row: Row, batches: list[int]) -> list[str]:
    rt = "" if row.round_to is None else f" rt{row.round_to}"
    target = "-" if row.target is None else f"ort-cpu:{row.target}"
    if row.target is None:
        profile = "-"
    else:
        cold = f"{row.seconds:.0f} s/{row.measured_cold}"
        if row.profile_seconds is not None:
            cold += f" ({row.profile_seconds:.0f} prof)"
        cached = "-" if row.cached_seconds is None else f"{row.cached_seconds:.1f} s/{row.measured_cached}"
        profile = f"{cold} → {cached}"
    if row.compressed is None:
        what = "measured speedup" if row.plan.startswith("latency") else "MAC reduction"
        note = f"unreachable: best {what} {row.unreachable:.2f}×"
        return [row.model, row.plan + rt, target, note, "", *["" for _ in batches * 2], "", "", profile]
    plan = row.compressed.plan
    red = mac_reduction(plan)
    speed, ratio = [], []
    for b in batches:
        p = row.speed[b]
        mark = "*" if b == row.target else ""
        speed.append(f"{p.speedup:.2f}×{mark} [{p.speedup_spread[0]:.2f}–{p.speedup_spread[1]:.2f}]")
        ratio.append(f"{p.speedup / red:.2f}")
    decomposed = [e for e in plan.layers if e.decision == "decomposed"]
    err = math.fsum(e.rel_error**2 for e in decomposed if e.rel_error is not None)
    counts = f"{len(decomposed)}/{len(plan.layers) - len(decomposed)}"
    untargeted = f"{row.seconds:.1f} s" if row.target is None else ""
    return [row.model, row.plan + rt, target, f"{red:.2f}×", predicted(row), *speed, *ratio, f"{err:.2f}",
            counts, untargeted or profile]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50,resnet20")
    ap.add_argument("--batches", default="1,32", help="measured batches; targeted plans are made for each")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    ap.add_argument("--macs-goal", type=float, default=3.0, help="MAC reduction of macs:Kx and the uniform ratio")
    ap.add_argument("--ratio", default="", help="uniform ratio per model, e.g. resnet50=0.3 (default: searched)")
    ap.add_argument("--latency", default="resnet20=1.3,default=2", help="latency:K per model")
    ap.add_argument("--round-to", default="none", help="comma list of none / K / auto; every plan per value")
    ap.add_argument("--no-cached-rerun", action="store_true", help="skip the second (cached) targeted compress")
    ap.add_argument("--duration", type=float, default=3.0, help="minimum timed seconds per measurement")
    ap.add_argument("--iterations", type=int, default=10, help="minimum timed calls per model and measurement")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="resnet20 only, short timings, no cached rerun (a smoke run, not figures)")
    args = ap.parse_args()
    if args.quick:
        args.models, args.duration, args.iterations, args.warmup, args.no_cached_rerun = "resnet20", 1.0, 10, 0.3, True
    batches = [int(b) for b in args.batches.split(",")]
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    ratios, goals = _mapping(args.ratio), _mapping(args.latency)
    round_tos = [_round_to(r) for r in args.round_to.split(",")]
    head = ["model", "plan", "target", "MAC red.", "predicted", *[f"b{b} speedup" for b in batches],
            *[f"b{b} sp/MAC" for b in batches], "Σrel_err²", "dec/kept", "compress: s/measured cold → cached"]
    rows_out, notes = [head], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmpdir:
        tmp = Path(tmpdir)
        for name in args.models.split(","):
            dense, shape, source = dense_model(name, args.seed)
            notes.append(f"{name}: {source}")
            print(f"{name}: {source}", flush=True)
            originals = {b: export_fixed(dense, tmp, f"{name}-orig-b{b}", shape, b) for b in batches}
            for rt in round_tos:
                plans: list[tuple[Row, str]] = []
                if "ratio" in variants:
                    ratio = float(ratios[name]) if name in ratios else uniform_ratio(dense, name, shape,
                                                                                  args.macs_goal, rt)
                    plans.append((Row(name, f"ratio:{ratio:g}", None, rt), f"ratio:{ratio:g}"))
                macs = f"macs:{args.macs_goal:g}x"
                if "macs" in variants:
                    plans.append((Row(name, macs, None, rt), macs))
                for b in batches:
                    if "macs-target" in variants:
                        plans.append((Row(name, macs, b, rt), macs))
                    if "latency" in variants:
                        rule = f"latency:{goals.get(name, goals.get('default', '2'))}x"
                        plans.append((Row(name, rule, b, rt), rule))
                for row, rank in plans:
                    if row.round_to == "auto" and row.target is None:
                        continue  # auto alignment is measured on a target
                    run_plan(row, dense, shape, rank, not args.no_cached_rerun, tmp)
                    if row.compressed is not None:
                        measure(row, originals, shape, tmp, args)
                    rows_out.append(cells(row, batches))
                    print("  ".join(rows_out[-1]), flush=True)
                    row.compressed = None  # the model is no longer needed; keep memory flat
    minutes = (time.perf_counter() - started) / 60
    print(f"\nONNX Runtime CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {minutes:.1f} min. "
          f"{'; '.join(notes)}.\nspeedup = median of paired per-round ratios [spread], * = the plan's target batch; "
          "predicted: latency: the layer cost model (and the search's end-to-end measurement), macs: with a target "
          "T/(T − Σ(dense − chain)); Σrel_err² over decomposed layers; compress: seconds/measurements performed, "
          "cold (fresh cost cache; 'prof' = time before the end-to-end search) → cached (same cache file)\n")
    print(table(rows_out))


if __name__ == "__main__":
    main()
