"""`auto_round_to`: measure which rank multiple (1, 4, 8, 16, 32) the target runs best.

Runtimes prefer some channel counts: ONNX Runtime's CPU convolutions work in channel blocks (8 or 16 floats
wide, depending on the vector unit), TensorRT's tensor cores want multiples of 8 (fp16) or 32 (int8). The
answer depends on the machine, so it is measured rather than assumed.

Two probe chains are timed at ranks across 32–96: the Tucker-2 chain of a 3×3 conv 128→128 at 28×28 and
the SVD chain of a 1×1 conv 256→256 at 28×28. All multiples of 4 in the range are measured, plus a sample
of ranks ≡ 2 (mod 4) and of odd ranks. Time grows with MACs, so each measured time is divided by the time
an affine fit in MACs (over all ranks of that probe) predicts for it: below 1 the rank runs faster than
its size suggests. A multiple m scores the mean of that ratio over the ranks it allows (for m = 1, every
integer: the residue classes are weighted by how often they occur, 1/2 odd, 1/4 ≡ 2 mod 4, 1/4 multiples
of 4), averaged over the probes. The smallest m whose score is within 3 % of the best wins: a coarser
multiple forces larger rank steps, so it must earn its place.
"""

from __future__ import annotations

import statistics
from typing import Any

from .cache import CostCache
from .geometry import Geometry
from .table import Request, chain_macs, measure_costs
from .target import Target

__all__ = ["MULTIPLES", "PROBES", "TENSORRT_ALIGNMENT", "auto_round_to", "tensorrt_alignment"]

MULTIPLES = (1, 4, 8, 16, 32)
# TensorRT's tensor-core kernels want channel counts that are multiples of 8 in fp16 and 32 in int8 (NVIDIA's
# performance guide); below that they pad or fall back to slower kernels.
TENSORRT_ALIGNMENT = {"fp16": 8, "int8": 32}


def tensorrt_alignment(backend: str, precision: str) -> tuple[int, dict[str, Any]] | None:
    """The rank multiple ``--round-to auto`` takes on TensorRT serving fp16 / int8, with the plan's evidence.

    On ``trt`` / ``ort-trt`` at fp16 or int8: the documented tensor-core multiple (8 / 32); None elsewhere (the
    multiple is then measured by `auto_round_to`).

    The rule rather than a measurement: the layer-cost graphs are timed in fp32, which is not what a
    strongly typed fp16 / int8 engine runs.
    """
    if backend not in ("trt", "ort-trt") or precision not in TENSORRT_ALIGNMENT:
        return None
    chosen = TENSORRT_ALIGNMENT[precision]
    return chosen, {"method": f"TensorRT tensor-core rule: channel multiples of {chosen} for {precision}",
                    "precision": precision, "chosen": chosen}
PROBES = {
    "tucker2 3x3 128->128 @28x28": (Geometry("conv", 128, 128, (3, 3), padding=(1, 1), in_hw=(28, 28)), "tucker2"),
    "svd 1x1 256->256 @28x28": (Geometry("conv", 256, 256, (1, 1), in_hw=(28, 28)), "svd"),
}
_RANKS = (sorted(set(range(32, 97, 4)) | {34, 42, 54, 62, 74, 86} | {33, 39, 45, 51, 57, 63, 69, 77, 83, 93}))
_TOLERANCE = 0.03


def _ranks_for(method: str, r: int) -> tuple[int, ...]:
    return (r, r) if method == "tucker2" else (r,)


def _affine_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (a, b) of y ≈ a + b·x."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var > 0 else 0.0
    return my - b * mx, b


def _score(relative: dict[int, float], m: int) -> float:
    """Mean relative time over the ranks multiple ``m`` allows (m = 1: residue classes by frequency)."""
    if m == 1:
        classes = [([v for r, v in relative.items() if r % 2 == 1], 0.5),
                   ([v for r, v in relative.items() if r % 4 == 2], 0.25),
                   ([v for r, v in relative.items() if r % 4 == 0], 0.25)]
        return sum(w * statistics.fmean(vals) for vals, w in classes if vals) / sum(w for vals, w in classes if vals)
    return statistics.fmean(v for r, v in relative.items() if r % m == 0)


def auto_round_to(target: Target, *, cache: CostCache | None = None, progress: bool | None = None,
                  rounds: int = 8, min_time_s: float = 0.08) -> tuple[int, dict[str, Any]]:
    """Measure the rank multiple that ``target`` runs best, for ``--round-to auto``.

    Args:
        target: backend, batch and threads to measure on.
        cache: the cost cache (a second call on the same target measures nothing); None: the default one.
        progress: tqdm bar while measuring (True / False; None: only on a terminal).
        rounds: timed rounds per probe (`time_graphs`).
        min_time_s: timed seconds per graph (`time_graphs`).

    Returns:
        (m, evidence): m in `MULTIPLES`; evidence is JSON-ready for the plan: ``{method, multiples,
        tolerance, scores: {m: relative time}, probes: {probe: {rank: ms}}, chosen}``.
    """
    requests: list[Request] = [(g, method, _ranks_for(method, r)) for g, method in PROBES.values() for r in _RANKS]
    times = measure_costs(requests, target, cache=cache, progress=progress, rounds=rounds, min_time_s=min_time_s)
    per_probe: dict[str, dict[int, float]] = {}
    scores_per_probe: list[dict[int, float]] = []
    for label, (geometry, method) in PROBES.items():
        ms = {r: times[(geometry, method, _ranks_for(method, r))] for r in _RANKS}
        macs = {r: float(chain_macs(geometry, method, _ranks_for(method, r))) for r in _RANKS}
        a, b = _affine_fit([macs[r] for r in _RANKS], [ms[r] for r in _RANKS])
        relative = {r: ms[r] / max(a + b * macs[r], 1e-9) for r in _RANKS}
        scores_per_probe.append({m: _score(relative, m) for m in MULTIPLES})
        per_probe[label] = {str(r): ms[r] for r in _RANKS}
    scores = {m: statistics.fmean(s[m] for s in scores_per_probe) for m in MULTIPLES}
    best = min(scores.values())
    chosen = next(m for m in MULTIPLES if scores[m] <= best * (1 + _TOLERANCE))
    evidence = {
        "method": "mean measured/fitted time over the ranks each multiple allows, on probe chains at ranks "
                  f"{_RANKS[0]}–{_RANKS[-1]}; smallest multiple within {_TOLERANCE:.0%} of the best",
        "target": str(target),
        "multiples": list(MULTIPLES),
        "tolerance": _TOLERANCE,
        "scores": {str(m): round(v, 4) for m, v in scores.items()},
        "probes": per_probe,
        "chosen": chosen,
    }
    return chosen, evidence
