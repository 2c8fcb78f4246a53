"""Benchmark: accuracy on digits of a trained, compressed, fine-tuned and ADMM-trained ResNet-20 (prints a table).

These are the figures the tests deliberately do not assert: after a few epochs they swing by tens of points
between CPUs (rounding differs and training amplifies it), so they are measured here, per seed, instead.

Rows, each top-1 % on the digits test split (360 images):
  1. the dense baseline (``tdexport train``, 6 epochs as `make demo`);
  2. its Tucker-2 ratio-0.5 decomposition before fine-tuning (the collapse);
  3. after 4 epochs of ``finetune`` (its defaults), and 4. with ``--distill soft``;
  5. ADMM from the baseline (README settings: 6 epochs, lr 0.01 step, ρ 2, an update every 22 steps), then
     decomposed at the same ranks, no fine-tuning; 6. the starting weights decomposed at those ranks.
Plus ADMM's mean projection gap (first → last update) and its mean per-layer reconstruction error of the
final decomposition against the starting weights' decomposition.

Usage: python tools/bench_recovery.py [--seeds 0 1 2] [--device cpu] [--keep DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _table import table

import tdexport
from tdexport.data import load_data
from tdexport.train import TrainConfig, run

FORMAT, RANK = "tucker", "ratio:0.5"


def one_seed(seed: int, device: str, root: Path, data) -> dict:
    """Every figure of one seed; run directories under ``root``."""
    fig, seconds = {}, {}
    t0 = time.perf_counter()
    base = run.train("resnet20", data=data, cfg=TrainConfig(epochs=6, lr=0.1, seed=seed, device=device),
                     out=root / "base", progress=False)
    seconds["baseline"] = time.perf_counter() - t0
    fig["baseline"] = base["final_test_top1"]
    compressed = tdexport.compress("resnet20", weights=str(root / "base"), format=FORMAT, rank=RANK, num_classes=10)
    tdexport.save(root / "tk", compressed)
    for label, distill in (("finetune", None), ("finetune soft", "soft")):
        t0 = time.perf_counter()
        m = run.finetune(root / "tk", data=data, out=root / label.replace(" ", "-"), progress=False,
                         cfg=TrainConfig(epochs=4, lr=0.05, seed=seed, device=device, distill=distill))
        seconds[label] = time.perf_counter() - t0
        fig["decomposed"], fig[label] = m["start_test_top1"], m["final_test_top1"]
    t0 = time.perf_counter()
    m = run.admm("resnet20", format=FORMAT, rank=RANK, data=data, out=root / "admm", rho=2.0, admm_every=22,
                 weights=str(root / "base"), progress=False,
                 cfg=TrainConfig(epochs=6, lr=0.01, sched="step", decay_epochs=100, seed=seed, device=device))
    seconds["admm"] = time.perf_counter() - t0
    fig["admm"], fig["plain"] = m["decomposed_test_top1"], m["plain_decomposed_test_top1"]
    gaps = [h["mean_gap"] for h in m["admm_history"]]
    errors = m["rel_error"].values()
    fig["gap"] = (gaps[0], gaps[-1])
    fig["error"] = (statistics.mean(e["start"] for e in errors), statistics.mean(e["final"] for e in errors))
    fig["seconds"] = seconds
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directories here (default: a temp dir)")
    args = ap.parse_args()
    data = load_data("digits")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            root = (args.keep or Path(tmp)) / f"seed{seed}"
            results[seed] = one_seed(seed, args.device, root, data)
    pct = [("dense baseline, 6 epochs", "baseline"), (f"{FORMAT} {RANK}, no fine-tuning", "decomposed"),
           ("+ finetune 4 epochs", "finetune"), ("+ finetune 4 epochs, --distill soft", "finetune soft"),
           ("ADMM 6 epochs, then decomposed", "admm"), ("starting weights decomposed (same ranks)", "plain")]
    seeds = list(results)
    rows = [["top-1 % on digits test", *(f"seed {s}" for s in seeds), *(["mean", "min–max"] if len(seeds) > 1 else [])]]
    for label, key in pct:
        values = [results[s][key] for s in seeds]
        spread = [f"{statistics.mean(values):.2f}", f"{min(values):.2f}–{max(values):.2f}"] if len(seeds) > 1 else []
        rows.append([label, *(f"{v:.2f}" for v in values), *spread])
    extra = [("ADMM mean gap, first → last update", "gap"),
             ("mean layer rel. error, start → after ADMM", "error")]
    for label, key in extra:
        rows.append([label, *(f"{results[s][key][0]:.3f} → {results[s][key][1]:.3f}" for s in seeds),
                     *([""] * (2 if len(seeds) > 1 else 0))])
    total = {s: sum(results[s]["seconds"].values()) for s in seeds}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, digits "
          f"(1437 train / 360 test), ResNet-20; training time per seed: "
          + ", ".join(f"seed {s} {total[s]:.0f} s" for s in seeds) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
