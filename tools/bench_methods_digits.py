"""Benchmark: every compression method on the digits ResNet-20 at about 3× fewer MACs, before and after fine-tuning.

The claim measured (tests do not assert accuracy after training): on the digits baseline each method, at
about ``--goal``× fewer MACs (storage bits for reorder, which keeps the MACs), recovers to within
``--tolerance`` points of the baseline's top-1 after the default fine-tune; ADMM with the general TT and
with HT-2 runs end to end.

Per seed:
  1. the dense baseline: ``tdexport train resnet20`` on digits, 6 epochs, lr 0.1 (as `make demo`), or the
     run directory ``--base DIR`` (then every seed starts from it and the seed only changes fine-tuning);
  2. per method, a bisection on the uniform rule's one number — ``ratio:F`` (tucker, tt special, tt general,
     cp, ht2), ``svt:R`` (Tucker-2) or reorder's ``coef_ratio`` (g = 4) — for the setting whose reduction
     macs_before / macs_after (storage_bits_before / storage_bits_after for reorder) is closest to the goal
     in log scale; the reduction only falls as the number grows, so each step halves the interval. When even
     the smallest setting tried stays below the goal the row says so ("max"), when even the largest (1)
     passes it, "min" (cp: ratio:1 is already beyond 3×);
  3. that setting compressed from the baseline weights, saved, and fine-tuned with the ``finetune`` CLI
     defaults (4 epochs, onecycle, peak lr 0.05, batch 64, no distillation); the row gives top-1 before
     (``start_test_top1``) and after (``final_test_top1``) and the drop against the baseline in points;
  4. ADMM from the baseline for the general TT and HT-2 at ``ratio:0.5`` (2 epochs, lr 0.01 step schedule,
     ρ 2, a Z/U update every 22 steps, as tools/bench_recovery.py uses the README's settings), then decomposed
     at the planned ranks without fine-tuning: its top-1, the starting weights' decomposition's top-1, the
     mean projection gap first → last update and the mean layer relative error start → final.

Times: "search s" is the bisection (every step factorizes the baseline), "FT s" the fine-tune with its two
evaluations; ADMM's is the whole run.

Usage: python tools/bench_methods_digits.py [--seeds 0 1] [--methods tucker,cp,admm-ht2] [--goal 3]
       [--base DIR] [--keep DIR] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _table import table

import tdexport
from tdexport.data import load_data, make_loader
from tdexport.plan import Plan
from tdexport.train import TrainConfig, run
from tdexport.train.loop import evaluate_top1

MODEL = "resnet20"
NUM_CLASSES = 10
ADMM_RANK = "ratio:0.5"


@dataclass(frozen=True)
class Method:
    """One compression method searched on one number.

    Attributes:
        key: name for ``--methods`` and the table.
        format: `tdexport.compress` format.
        rule: rank rule template with ``{}`` for the searched number, or None when the number is an option.
        option: the keyword the number goes to when ``rule`` is None (reorder's ``coef_ratio``).
        options: further `tdexport.compress` keywords.
        storage: measure the reduction on storage bits instead of MACs.
    """

    key: str
    format: str
    rule: str | None
    option: str | None = None
    options: dict = field(default_factory=dict)
    storage: bool = False

    def settings(self, value: float) -> tuple[str, dict]:
        """(rank rule, compress keywords) for the searched number ``value``."""
        if self.rule is not None:
            return self.rule.format(f"{value:.6g}"), dict(self.options)
        return "ratio:0.5", {**self.options, self.option: float(f"{value:.6g}")}

    def label(self, value: float) -> str:
        """The setting as shown in the table (``ratio:0.31``, ``coef_ratio=0.3 g=4``)."""
        if self.rule is not None:
            return self.rule.format(f"{value:.4g}")
        extra = "".join(f" {k}={v}" for k, v in self.options.items())
        return f"{self.option}={value:.4g}{extra}"


METHODS = [
    Method("tucker", "tucker", "ratio:{}"),
    Method("tt", "tt", "ratio:{}"),
    Method("ttg", "tt", "ratio:{}", options={"tt_type": "general"}),
    Method("cp", "cp", "ratio:{}"),
    Method("ht2", "ht2", "ratio:{}"),
    Method("svt", "tucker", "svt:{}"),
    Method("reorder", "reorder", None, option="coef_ratio", options={"groups": 4}, storage=True),
]
ADMM = {"admm-ttg": ("tt", {"tt_type": "general"}), "admm-ht2": ("ht2", {})}


def reductions(totals: dict[str, int], storage: bool) -> tuple[float, float]:
    """(MAC or storage-bit reduction, parameter reduction), each before / after (×; 1 = nothing saved)."""
    key = "storage_bits" if storage else "macs"
    return (totals[f"{key}_before"] / totals[f"{key}_after"],
            totals["params_before"] / totals["params_after"])


def search(method: Method, base: str, goal: float, steps: int) -> dict:
    """Bisect ``method``'s number in (0, 1] for the reduction closest to ``goal`` (in log scale).

    Every evaluation compresses the baseline ``base`` (a weights path) for real, so data-dependent rules
    (``svt``) see the weights they will be applied to. Returns ``value``, ``reduction``, ``params`` (both ×),
    ``bound`` (``" (max)"`` when no setting reached ``goal``, ``" (min)"`` when every one passed it, else
    empty) and ``tried`` ([(value, reduction)] in order).
    """
    tried: list[tuple[float, float, float]] = []

    def measure(value: float) -> float:
        rank, opts = method.settings(value)
        plan = tdexport.compress(MODEL, weights=base, format=method.format, rank=rank, num_classes=NUM_CLASSES,
                                 **opts).plan
        red, params = reductions(plan.totals, method.storage)
        tried.append((value, red, params))
        return red

    lo, hi = 0.01, 1.0
    if measure(lo) >= goal and measure(hi) < goal:
        for _ in range(steps):
            # Geometric midpoint: the reductions of ratio-type rules move with 1/value, not with value.
            mid = math.sqrt(lo * hi)
            red = measure(mid)
            if abs(math.log(red / goal)) < 0.005:
                break
            lo, hi = (mid, hi) if red >= goal else (lo, mid)
    value, red, params = min(tried, key=lambda t: abs(math.log(t[1] / goal)))
    reds = [t[1] for t in tried]
    bound = " (max)" if max(reds) < goal else " (min)" if min(reds) > goal else ""
    return {"value": value, "reduction": red, "params": params, "bound": bound,
            "tried": [(v, r) for v, r, _ in tried]}


def finetune_cfg(seed: int, device: str) -> TrainConfig:
    """The ``tdexport finetune`` defaults: 4 epochs, peak lr 0.05 (the rest are `TrainConfig`'s = the CLI's)."""
    return TrainConfig(epochs=4, lr=0.05, seed=seed, device=device)


def baseline(seed: int, device: str, root: Path, given: Path | None, data) -> tuple[str, float, float]:
    """(weights dir, top-1 %, seconds) of the dense baseline: trained into ``root/base`` or ``given``."""
    if given is None:
        t0 = time.perf_counter()
        m = run.train(MODEL, data=data, cfg=TrainConfig(epochs=6, lr=0.1, seed=seed, device=device),
                      out=root / "base", progress=False)
        return str(root / "base"), m["final_test_top1"], time.perf_counter() - t0
    metrics = given / "metrics.json"
    if metrics.is_file() and "final_test_top1" in (m := json.loads(metrics.read_text())):
        return str(given), m["final_test_top1"], 0.0
    model = tdexport.load(given)
    loader = make_loader(data.test, batch_size=256, train=False)
    return str(given), evaluate_top1(model, loader, torch.device("cpu"), classes=data.classes_present), 0.0


def one_method(method: Method, base: str, seed: int, args, root: Path, data) -> dict:
    """Search, compress, save and fine-tune one method; the row's figures."""
    t0 = time.perf_counter()
    found = search(method, base, args.goal, args.steps)
    rank, opts = method.settings(found["value"])
    compressed = tdexport.compress(MODEL, weights=base, format=method.format, rank=rank, num_classes=NUM_CLASSES,
                                   **opts)
    tdexport.save(root / method.key, compressed, overwrite=True)
    t1 = time.perf_counter()
    m = run.finetune(root / method.key, data=data, cfg=finetune_cfg(seed, args.device),
                     out=root / f"{method.key}-ft", progress=False)
    t2 = time.perf_counter()
    return {**found, "label": method.label(found["value"]), "before": m["start_test_top1"],
            "after": m["final_test_top1"], "search_s": t1 - t0, "ft_s": t2 - t1}


def one_admm(key: str, base: str, seed: int, args, root: Path, data) -> dict:
    """ADMM from the baseline at ``ratio:0.5``, decomposed at the end; its figures."""
    fmt, opts = ADMM[key]
    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=args.admm_epochs, lr=0.01, sched="step", decay_epochs=100, seed=seed,
                      device=args.device)
    m = run.admm(MODEL, format=fmt, rank=ADMM_RANK, data=data, cfg=cfg, out=root / key, rho=2.0, admm_every=22,
                 weights=base, progress=False, **opts)
    red, params = reductions(Plan.read(root / key / "plan.json").totals, storage=False)
    gaps = [h["mean_gap"] for h in m["admm_history"]]
    errors = list(m["rel_error"].values())
    return {"reduction": red, "params": params, "plain": m["plain_decomposed_test_top1"],
            "admm": m["decomposed_test_top1"], "gap": (gaps[0], gaps[-1]),
            "error": (statistics.mean(e["start"] for e in errors), statistics.mean(e["final"] for e in errors)),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    keys = [m.key for m in METHODS] + list(ADMM)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", default=",".join(keys), help=f"comma-separated subset of {','.join(keys)}")
    ap.add_argument("--goal", type=float, default=3.0, help="MAC (storage for reorder) reduction sought, ×")
    ap.add_argument("--tolerance", type=float, default=1.5, help="allowed top-1 drop after fine-tuning, points")
    ap.add_argument("--steps", type=int, default=10, help="bisection steps per method")
    ap.add_argument("--admm-epochs", type=int, default=2)
    ap.add_argument("--base", type=Path, default=None, help="dense baseline run directory (default: train one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep the run directories here; a new or empty directory, as training refuses to "
                         "overwrite a run (default: a temp dir)")
    args = ap.parse_args()
    chosen = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = sorted(set(chosen) - set(keys))
    if unknown:
        ap.error(f"unknown --methods {', '.join(unknown)}; choose from {', '.join(keys)}")
    data = load_data("digits")
    rows = [["seed", "method", "rule found", "reduction", "params ×", "baseline", "before FT", "after FT",
             "drop pp", f"within {args.tolerance:g}?", "search s", "FT s"]]
    admm_rows = [["seed", "ADMM", "rule", "MACs ×", "params ×", "baseline", "plain decomposed", "after ADMM",
                  "mean gap first → last", "rel. error start → final", "seconds"]]
    verdicts: dict[str, list[bool]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            root = (args.keep or Path(tmp)) / f"seed{seed}"
            base, top1, base_s = baseline(seed, args.device, root, args.base, data)
            print(f"seed {seed}: baseline {top1:.2f}% ({base_s:.0f} s) in {base}", flush=True)
            for method in (m for m in METHODS if m.key in chosen):
                r = one_method(method, base, seed, args, root, data)
                drop = top1 - r["after"]
                ok = drop <= args.tolerance
                verdicts.setdefault(method.key, []).append(ok)
                unit = "storage" if method.storage else "MACs"
                reached = r["bound"]
                rows.append([str(seed), method.key, r["label"], f"{r['reduction']:.2f}× {unit}{reached}",
                             f"{r['params']:.2f}", f"{top1:.2f}", f"{r['before']:.2f}", f"{r['after']:.2f}",
                             f"{drop:+.2f}", "yes" if ok else "no", f"{r['search_s']:.0f}", f"{r['ft_s']:.0f}"])
                print(f"  {method.key}: {r['label']} → {r['reduction']:.2f}× {unit}{reached} "
                      f"(tried {', '.join(f'{v:.4g}:{x:.2f}' for v, x in r['tried'])}); top-1 "
                      f"{r['before']:.2f} → {r['after']:.2f}", flush=True)
            for key in (k for k in ADMM if k in chosen):
                a = one_admm(key, base, seed, args, root, data)
                admm_rows.append([str(seed), key, ADMM_RANK, f"{a['reduction']:.2f}", f"{a['params']:.2f}",
                                  f"{top1:.2f}", f"{a['plain']:.2f}", f"{a['admm']:.2f}",
                                  f"{a['gap'][0]:.3f} → {a['gap'][1]:.3f}",
                                  f"{a['error'][0]:.3f} → {a['error'][1]:.3f}", f"{a['seconds']:.0f}"])
                print(f"  {key}: decomposed {a['plain']:.2f} → after ADMM {a['admm']:.2f}", flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, digits "
          f"(1437 train / 360 test), {MODEL}, goal {args.goal:g}×; total {time.perf_counter() - started:.0f} s\n")
    if len(rows) > 1:
        print(table(rows))
    if len(admm_rows) > 1:
        print("\n" + table(admm_rows))
    if verdicts:
        within = [k for k, v in verdicts.items() if all(v)]
        print(f"\nwithin {args.tolerance:g} points on every seed: {', '.join(within) or 'none'}; "
              f"not: {', '.join(k for k in verdicts if k not in within) or 'none'}")


if __name__ == "__main__":
    main()
