"""Benchmark: tdexport's factorizations vs tensorly on ResNet-50's layers (prints tables).

Part 1, Tucker-2 + SVD with VBMF ranks, all eligible ResNet-50 convs (stem and classifier kept, as
`tdexport compress` does): our wall time for spectra + EVBMF ranks + HOSVD + HOOI, and the relative
error per 3×3 conv against tensorly's partial_tucker (HOOI) at the same ranks.
Part 2, CP at rank O/2 on the sixteen 3×3 convs, 100 ALS iterations: our total time, and the error
against tensorly's parafac at the same budget on one conv per stage (tensorly takes ~30 min for all).

Weights: published ResNet-50 weights cannot be downloaded here, and random init is pure noise (VBMF
then rightly finds rank ≈ 1, which times nothing). By default each kernel is a synthetic
"trained-like" one of the same shape: random orthogonal channel bases with exponentially decaying
spectra plus 5 % noise. Pass --weights PATH (a torchvision ResNet-50 state dict) to use real ones.

Usage: python tools/bench_decompose.py [--weights PATH] [--skip-tensorly] [--cp-stages 64,128,256,512]
"""

from __future__ import annotations

import argparse
import time

import torch
from _table import table
from torch import nn

from tdexport.factor import cp_als, mode_spectrum, row_spectrum, truncated_svd, tucker2
from tdexport.factor.evbmf import evbmf_rank_from_values
from tdexport.factor.reference import tensorly_parafac, tensorly_partial_tucker
from tdexport.zoo import create_model


def trained_like(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """A kernel with decaying channel spectra (like trained conv weights), shape (O, I, kh, kw)."""
    o, i = shape[:2]
    w = torch.randn(shape, generator=g)
    w = w * torch.exp(-torch.arange(o) / (o / 6))[:, None, None, None]
    w = w * torch.exp(-torch.arange(i) / (i / 6))[None, :, None, None]
    qo = torch.linalg.qr(torch.randn(o, o, generator=g))[0]
    qi = torch.linalg.qr(torch.randn(i, i, generator=g))[0]
    w = torch.einsum("oihw,po,qi->pqhw", w, qo, qi)
    return (w + 0.05 * w.std() * torch.randn(shape, generator=g)).contiguous()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a.double() - b.double()) / torch.linalg.vector_norm(a.double()))


def eligible_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[1:]  # the stem stays dense by default; fc is not a conv


def stage_of(name: str) -> str:
    return name.split(".")[0]


def tucker_pass(weights: dict[str, torch.Tensor], ranks: dict, ours: dict) -> None:
    """Spectra + EVBMF ranks + HOSVD/HOOI (3×3) or SVD (1×1) for every conv; fills ranks and errors."""
    for name, w in weights.items():
        if w.shape[2] * w.shape[3] > 1:
            s0, s1 = mode_spectrum(w, 0), mode_spectrum(w, 1)
            r = (evbmf_rank_from_values(s0.values, (w.shape[0], w[0].numel())),
                 evbmf_rank_from_values(s1.values, (w.shape[1], w.numel() // w.shape[1])))
            f = tucker2(w, r, iters=5, spectra=[s0, s1])
            ours[name] = f.errors[-1]
        else:
            m = w.flatten(1)
            spec = row_spectrum(m.T if m.shape[0] > m.shape[1] else m)
            r = (evbmf_rank_from_values(spec.values, tuple(m.shape)),)
            ours[name] = truncated_svd(m, r[0], spectrum=spec).rel_error(m)
        ranks[name] = r


def bench_tucker(weights: dict[str, torch.Tensor], skip_tensorly: bool) -> None:
    ranks: dict[str, tuple[int, ...]] = {}
    ours: dict[str, float] = {}
    times = []
    for _ in range(3):  # median of 3 whole passes: the first one also pays one-off library start-up
        t0 = time.perf_counter()
        tucker_pass(weights, ranks, ours)
        times.append(time.perf_counter() - t0)
    total = sorted(times)[1]
    n3 = sum(w.shape[2] > 1 for w in weights.values())
    print(f"\n## Tucker-2 (3×3) + SVD (1×1), VBMF ranks: {len(weights)} convs ({n3} 3×3) in {total:.2f} s "
          f"(median of 3 passes: {', '.join(f'{t:.2f}' for t in times)} s)\n")
    rows = [["stage", "3x3 convs", "ranks (R_out,R_in)", "ours err", "tensorly err", "max ours-tl", "tensorly s"]]
    tl_total, worst = 0.0, -1.0
    for stage in sorted({stage_of(n) for n in weights}):
        names = [n for n in weights if stage_of(n) == stage and weights[n].shape[2] > 1]
        if not names:
            continue
        ours_err = sum(ours[n] for n in names) / len(names)
        tl_err, diff, t_stage = "-", "-", 0.0
        if not skip_tensorly:
            errs = []
            for n in names:
                t = time.perf_counter()
                core, (u0, u1) = tensorly_partial_tucker(weights[n], (0, 1), ranks[n])
                t_stage += time.perf_counter() - t
                errs.append(rel(weights[n], torch.einsum("abhw,oa,ib->oihw", core, u0, u1)))
            d = max(ours[n] - e for n, e in zip(names, errs, strict=True))
            worst = max(worst, d)
            tl_err, diff = f"{sum(errs) / len(errs):.6f}", f"{d:+.2e}"
            tl_total += t_stage
        rows.append([stage, str(len(names)), " ".join(f"{ranks[n][0]},{ranks[n][1]}" for n in names[:3]) + " …",
                     f"{ours_err:.6f}", tl_err, diff, f"{t_stage:.1f}" if not skip_tensorly else "-"])
    print(table(rows))
    svd_names = [n for n in weights if weights[n].shape[2] == 1]
    print(f"\n1×1 convs by SVD: {len(svd_names)}, mean error "
          f"{sum(ours[n] for n in svd_names) / len(svd_names):.6f} (Eckart–Young optimal by construction)")
    if not skip_tensorly:
        print(f"tdexport total {total:.2f} s (target ≤ 3 s) vs tensorly partial_tucker on the 3×3 convs alone "
              f"{tl_total:.1f} s; worst per-layer error difference ours − tensorly: {worst:+.2e}")


def bench_cp(weights: dict[str, torch.Tensor], stages: set[int], skip_tensorly: bool, iters: int) -> None:
    convs = {n: w for n, w in weights.items() if w.shape[2] > 1}
    results = {}
    t0 = time.perf_counter()
    for name, w in convs.items():
        t = time.perf_counter()
        f = cp_als(w, w.shape[0] // 2, iters=iters, tol=0.0)
        results[name] = (f.rel_error(w), time.perf_counter() - t)
    total = time.perf_counter() - t0
    print(f"\n## CP-ALS at rank O/2, {iters} iterations: {len(convs)} 3×3 convs in {total:.1f} s (target ≤ 60 s)\n")
    rows = [["layer", "shape", "rank", "ours s", "ours err", "tensorly s", "tensorly err", "ours-tl"]]
    done: set[int] = set()
    for name, w in convs.items():
        o = w.shape[0]
        if o in done:
            continue
        done.add(o)
        err, secs = results[name]
        tl = ["-", "-", "-"]
        if not skip_tensorly and o in stages:
            t = time.perf_counter()
            lam, fs = tensorly_parafac(w, o // 2, n_iter_max=iters, tol=0.0)
            tl_secs = time.perf_counter() - t
            tl_err = rel(w, torch.einsum("r,or,ir,hr,wr->oihw", lam, *fs))
            tl = [f"{tl_secs:.1f}", f"{tl_err:.6f}", f"{err - tl_err:+.2e}"]
        rows.append([name, "x".join(map(str, w.shape)), str(o // 2), f"{secs:.2f}", f"{err:.6f}", *tl])
    print(table(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="ResNet-50 state dict (.pth/.safetensors); default: synthetic trained-like")
    ap.add_argument("--skip-tensorly", action="store_true", help="only time tdexport")
    ap.add_argument("--cp-stages", default="64,128,256,512",
                    help="output widths of the stages whose first 3×3 conv is compared with tensorly's parafac")
    ap.add_argument("--cp-iters", type=int, default=100)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model("resnet50", weights=args.weights or "random")
    g = torch.Generator().manual_seed(0)
    weights = {n: (m.weight.detach().clone() if args.weights else trained_like(tuple(m.weight.shape), g))
               for n, m in eligible_convs(model)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; weights: "
          f"{args.weights or 'synthetic trained-like (see module docstring)'}")
    bench_tucker(weights, args.skip_tensorly)
    bench_cp(weights, {int(s) for s in args.cp_stages.split(",") if s}, args.skip_tensorly, args.cp_iters)


if __name__ == "__main__":
    main()
