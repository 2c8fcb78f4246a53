"""Benchmark: `reorder_compress` (greedy column order + DCT) over every Conv2d/Linear weight of ResNet-18/50.

For each model (torchvision, weights=None: random init, so nothing is downloaded) every Conv2d and Linear
weight goes through ``reorder_compress(weight, g, ratio)``; the script prints, per model, the number of
weights and of g-vector columns, the total wall time and process CPU time of those calls (on a shared machine
the CPU time is the steadier number), the total path length of the orders
Σ_k ‖x_{π(k+1)} − x_{π(k)}‖ (Euclidean, summed over layers, columns x of the zero-padded (g, n) view) and
the relative Frobenius reconstruction error over all layers together (√(Σ‖W − Ŵ‖²) / √(Σ‖W‖²)).

Only the ``reorder_compress`` calls are timed; path lengths and errors are computed afterwards.

Usage: python tools/bench_reorder_order.py [--models resnet18,resnet50] [--groups 4] [--ratio 0.25]
       [--block 1024] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from _table import table
from torch import nn

from tdexport.factor.reorder import DEFAULT_BLOCK, reorder_compress


def weights(name: str) -> list[torch.Tensor]:
    """Every Conv2d/Linear weight of torchvision model ``name`` with random init (seeded), in module order."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    return [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def path_length(weight: torch.Tensor, groups: int, order: torch.Tensor) -> float:
    """Σ_k ‖x_{π(k+1)} − x_{π(k)}‖ over the columns x (g-vectors) of the zero-padded (g, n) view."""
    n = -(-weight.numel() // groups)
    flat = torch.nn.functional.pad(weight.double().reshape(-1), (0, groups * n - weight.numel()))
    cols = flat.reshape(groups, n).T[order]
    return float((cols[1:] - cols[:-1]).norm(dim=1).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--block", type=int, default=DEFAULT_BLOCK)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = [["model", "layers", "weights", "columns", "wall s", "cpu s", "path length", "rel. error"]]
    for name in args.models.split(","):
        ws = weights(name)
        reorder_compress(ws[0], args.groups, args.ratio, block=args.block)  # warm-up (imports, FFT plans)
        t0, c0 = time.perf_counter(), time.process_time()
        fs = [reorder_compress(w, args.groups, args.ratio, block=args.block) for w in ws]
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        path = sum(path_length(w, args.groups, f.permutation) for w, f in zip(ws, fs, strict=True))
        err2 = sum(float((w.double() - f.reconstruct().double()).norm()) ** 2 for w, f in zip(ws, fs, strict=True))
        ref2 = sum(float(w.double().norm()) ** 2 for w in ws)
        rows.append([name, str(len(ws)), f"{sum(w.numel() for w in ws):,}", f"{sum(f.n_cols for f in fs):,}",
                     f"{seconds:.2f}", f"{cpu:.2f}", f"{path:.1f}", f"{(err2 / ref2) ** 0.5:.4f}"])
    print(f"reorder_compress(g={args.groups}, ratio={args.ratio}, block={args.block}), "
          f"torch threads {torch.get_num_threads()}")
    print(table(rows))


if __name__ == "__main__":
    main()
