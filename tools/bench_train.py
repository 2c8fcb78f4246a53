"""Benchmark: training throughput on digits (CPU) and ADMM's overhead per step (prints a table).

Rows: images/s of one training epoch for the dense ResNet-20 and its Tucker-2 (ratio 0.5) compressed
form, and ADMM on the dense model at --admm-every 100 (and 10) with its overhead per step relative to
plain training (goal ≤ 10 % at 100). Each row is the median of --repeats epochs, after one warm-up epoch.

Usage: python tools/bench_train.py [--repeats 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _table import table

from tdexport.data import load_data, make_loader
from tdexport.planner import compress
from tdexport.train import TrainConfig
from tdexport.train.admm import Admm
from tdexport.train.config import lr_at
from tdexport.zoo import create_model


def epoch_seconds(model, loader, cfg, admm=None, every=100) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    model.train()
    t0, step = time.perf_counter(), 0
    for images, labels in loader:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        if admm is not None:
            loss = loss + admm.penalty()
        opt.zero_grad()
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step, len(loader))
        opt.step()
        step += 1
        if admm is not None and step % every == 0:
            admm.update(step)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_data("digits")
    loader = make_loader(data.train, batch_size=args.batch_size, train=True, seed=0)
    n = len(data.train)
    cfg = TrainConfig(epochs=args.repeats + 1, lr=0.05)
    dense = create_model("resnet20", weights="random", num_classes=10)
    small = compress(dense, format="tucker", rank="ratio:0.5", input_shape=(3, 32, 32), model_name="resnet20",
                     num_classes=10)
    rows = [["run", "MACs", "epoch s", "img/s", "per step vs dense"]]
    results = {}
    for label, model, every in (("dense", dense, None), ("tucker ratio:0.5", small.model, None),
                                ("dense + ADMM every 100", dense, 100), ("dense + ADMM every 10", dense, 10)):
        admm = Admm(model, small.plan, rho=1e-3, total_updates=1_000) if every else None
        times = [epoch_seconds(model, loader, cfg, admm, every or 100) for _ in range(args.repeats + 1)][1:]
        results[label] = statistics.median(times)
        macs = small.plan.totals["macs_after" if model is small.model else "macs_before"]
        rel = results[label] / results["dense"] - 1
        rows.append([label, f"{macs / 1e6:.1f}M", f"{results[label]:.2f}", f"{n / results[label]:.0f}",
                     "—" if label == "dense" else f"{rel:+.1%}"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, digits train split ({n} images), "
          f"batch {args.batch_size}, median of {args.repeats} epochs\n")
    print(table(rows))


if __name__ == "__main__":
    main()
