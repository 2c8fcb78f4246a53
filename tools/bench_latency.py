"""Benchmark: how much of the MAC reduction turns into ONNX Runtime CPU speed (prints a table).

For ResNet-18 and ResNet-50 (random weights: latency does not depend on the values) compressed with
Tucker-2 at several rank ratios: MAC reduction, ORT-CPU speedup at batch 1 and 32 (paired,
interleaved rounds, median of per-round ratios), and speedup ÷ MAC reduction (goal ≥ 0.9 at ≥ 3×).

Usage: python tools/bench_latency.py [--models resnet18,resnet50] [--ratios 0.5,0.35,0.25] [--duration 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from _table import table

import tdexport
from tdexport.export.onnx import export_onnx
from tdexport.runtime import OrtRunner
from tdexport.validate.latency import measure_paired


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--ratios", default="0.5,0.35,0.25")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--duration", type=float, default=4.0, help="minimum timed seconds per row and batch")
    ap.add_argument("--iterations", type=int, default=10)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    head = ["model", "rank", "MAC red.", *[f"b{b} ms orig→comp" for b in batches],
            *[f"b{b} speedup" for b in batches], *[f"b{b} sp/MAC" for b in batches]]
    rows = [head]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            dense = tdexport.create_model(name, weights="random")
            shape = tuple(tdexport.zoo.model_info(name).input_shape)
            orig_path = Path(tmp) / f"{name}.onnx"
            export_onnx(dense, orig_path, input_shape=shape)
            for ratio in args.ratios.split(","):
                c = tdexport.compress(name, format="tucker", rank=f"ratio:{ratio}", weights="random")
                comp_path = Path(tmp) / f"{name}-{ratio}.onnx"
                export_onnx(c.model, comp_path, input_shape=shape)
                red = c.plan.totals["macs_before"] / c.plan.totals["macs_after"]
                ms, speed, ratio_cells = [], [], []
                with OrtRunner(orig_path, provider="cpu") as a, OrtRunner(comp_path, provider="cpu") as b:
                    for batch in batches:
                        x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
                        p = measure_paired(a, b, x, warmup_s=1.0, iterations=args.iterations,
                                           duration_s=args.duration)
                        ms.append(f"{p.original.p50:.1f}→{p.compressed.p50:.1f}")
                        speed.append(f"{p.speedup:.2f}× [{p.speedup_spread[0]:.2f}–{p.speedup_spread[1]:.2f}]")
                        ratio_cells.append(f"{p.speedup / red:.2f}")
                rows.append([name, f"ratio:{ratio}", f"{red:.2f}×", *ms, *speed, *ratio_cells])
                print("  ".join(rows[-1]), flush=True)
    print(f"\nONNX Runtime CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; p50 latency in ms, "
          "speedup = median of paired per-round ratios [spread]\n")
    print(table(rows))


if __name__ == "__main__":
    main()
