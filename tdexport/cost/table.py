"""`profile_costs`: measured per-call times of every layer's dense form and factor chain, as a `CostTable`.

For each distinct layer geometry the dense layer and its factor chain at a bounded grid of candidate ranks
are timed together (one interleaved `time_graphs` call, so they share the machine's state), through the
cache. Ranks are tied across modes: Tucker-2 / TT use (R_out, R_in) = (f·O, f·I) rounded up to the
alignment, CP uses R = f·O and SVD r = f·min(O, I), for f on `CANDIDATE_FRACTIONS`. A rank that was not
measured is priced by linear interpolation in the chain's MACs between the measured points of its
geometry, clamped to the end points.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..layers import chain_cost
from .cache import CostCache
from .geometry import Geometry
from .graphs import DENSE, chain_modules, layer_onnx
from .measure import time_graphs
from .target import Target

__all__ = ["CANDIDATE_FRACTIONS", "METHODS", "CostPoint", "LayerCosts", "CostTable", "candidate_ranks",
           "chain_macs", "measure_costs", "profile_costs"]

CANDIDATE_FRACTIONS = (0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.75, 1.0)
METHODS = ("tucker2", "tt", "cp", "svd")
_DEFAULT_ALIGN = 8
# TT in TDC's form lowers to exactly the Tucker-2 chain, so it is timed (and cached) as one.
_TIMED_AS = {"tt": "tucker2"}

Request = tuple[Geometry, str, tuple[int, ...]]


def _mode_sizes(geometry: Geometry, method: str) -> tuple[tuple[int, int], ...]:
    """Per rank: (grid base, cap). CP's rank is a fraction of the output channels, as the planner's."""
    o, i = geometry.out_ch, geometry.in_ch
    if method in ("tucker2", "tt"):
        return (o, o), (i, i)
    if method == "cp":
        return ((o, max(o, i)),)
    if method == "svd":
        return ((min(o, i), min(o, i)),)
    raise ValueError(f"unknown factorization method '{method}'; choose one of: {', '.join(METHODS)}")


def candidate_ranks(geometry: Geometry, method: str, *, fractions: Sequence[float] = CANDIDATE_FRACTIONS,
                    round_to: int | None = None, max_points: int = 8) -> list[tuple[int, ...]]:
    """The rank points measured for ``method`` on ``geometry``, smallest first.

    Each fraction f gives ranks ⌈f·n / m⌉·m per mode (n: the mode's grid base, m: ``round_to`` or 8),
    capped at the mode size and at least 1; duplicates are dropped and, above ``max_points``, points are
    thinned evenly keeping the smallest and the largest.
    """
    align = round_to or _DEFAULT_ALIGN
    points: list[tuple[int, ...]] = []
    for f in sorted(fractions):
        ranks = tuple(max(1, min(cap, math.ceil(f * base / align - 1e-9) * align))
                      for base, cap in _mode_sizes(geometry, method))
        if ranks not in points:
            points.append(ranks)
    if len(points) > max_points >= 2:
        step = (len(points) - 1) / (max_points - 1)
        points = [points[round(k * step)] for k in range(max_points)]
    return points


def _counted_macs(geometry: Geometry, method: str, ranks: tuple[int, ...]) -> int:
    _, macs = chain_cost(chain_modules(geometry, method, ranks), in_hw=geometry.in_hw, tokens=geometry.tokens)
    return int(macs)


@functools.lru_cache(maxsize=4096)
def _mac_coefficients(geometry: Geometry, method: str, n_ranks: int) -> tuple[int, ...]:
    """Coefficients of the chain's MACs as a multilinear polynomial in its ranks.

    Every factor chain (`tdexport.layers.structure_for`) is a sequence of convs / linears whose channel counts
    are either fixed or one rank, with a rank in both the input and the output only as a product of two
    different ranks (Tucker-2's core) or as a grouped conv of that rank (CP's depthwise pair, linear in it).
    So MACs = a + b·r₁ (+ c·r₂ + d·r₁·r₂), exactly, and four counted chains give it for every rank: building
    modules for each of the thousands of options a budget prices took seconds per model.
    """
    if n_ranks == 1:
        m1, m2 = (_counted_macs(geometry, method, (r,)) for r in (1, 2))
        return m1 - (m2 - m1), m2 - m1
    m11, m21, m12, m22 = (_counted_macs(geometry, method, rk) for rk in ((1, 1), (2, 1), (1, 2), (2, 2)))
    d = m22 - m21 - m12 + m11
    b, c = m21 - m11 - d, m12 - m11 - d
    return m11 - b - c - d, b, c, d


def chain_macs(geometry: Geometry, method: str, ranks: tuple[int, ...]) -> int:
    """MACs of one sample through the dense layer (``method="dense"``) or its chain at ``ranks``."""
    ranks = tuple(int(r) for r in ranks)
    if method == DENSE or len(ranks) not in (1, 2):
        return _counted_macs(geometry, method, ranks)
    coef = _mac_coefficients(geometry, method, len(ranks))
    if len(ranks) == 1:
        return coef[0] + coef[1] * ranks[0]
    a, b, c, d = coef
    return a + b * ranks[0] + c * ranks[1] + d * ranks[0] * ranks[1]


@dataclass(frozen=True)
class CostPoint:
    """One measured chain: its ranks, MACs per sample and time per call at the target batch (ms)."""

    ranks: tuple[int, ...]
    macs: int
    ms: float


@dataclass(frozen=True)
class LayerCosts:
    """Measured costs of one geometry and method: the dense time and the chain's points, by MACs."""

    geometry: Geometry
    method: str | None
    dense_ms: float
    points: tuple[CostPoint, ...] = ()

    def chain_ms(self, ranks: Sequence[int]) -> float:
        """Time per call (ms) of the chain at ``ranks``: measured, or interpolated linearly in MACs.

        Raises:
            ValueError: the layer has no method (profiled dense only) or no measured points.
        """
        if self.method is None or not self.points:
            raise ValueError(f"no factor-chain timings for {self.geometry.key}")
        ranks = tuple(int(r) for r in ranks)
        for p in self.points:
            if p.ranks == ranks:
                return p.ms
        x = chain_macs(self.geometry, _TIMED_AS.get(self.method, self.method), ranks)
        pts = sorted(self.points, key=lambda p: p.macs)
        xs = [p.macs for p in pts]
        if x <= xs[0]:
            return pts[0].ms
        if x >= xs[-1]:
            return pts[-1].ms
        hi = bisect.bisect_left(xs, x)
        a, b = pts[hi - 1], pts[hi]
        if b.macs == a.macs:
            return (a.ms + b.ms) / 2
        return a.ms + (b.ms - a.ms) * (x - a.macs) / (b.macs - a.macs)


class CostTable:
    """Per-layer measured costs on one target; all times in ms per call at ``target.batch``.

    Args:
        target: where the costs were measured.
        layers: layer name → its `LayerCosts` (layers of one geometry and method share one object).
        round_to: the alignment of the measured ranks.
    """

    def __init__(self, target: Target, layers: Mapping[str, LayerCosts], *, round_to: int | None = None) -> None:
        self.target = target
        self.layers = dict(layers)
        self.round_to = round_to

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def _layer(self, name: str) -> LayerCosts:
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(f"no measured costs for layer '{name}'") from None

    def dense_ms(self, name: str) -> float:
        """Time per call (ms) of the dense layer ``name``."""
        return self._layer(name).dense_ms

    def chain_ms(self, name: str, ranks: Sequence[int]) -> float:
        """Time per call (ms) of layer ``name``'s factor chain at ``ranks`` (see `LayerCosts.chain_ms`)."""
        return self._layer(name).chain_ms(ranks)

    def measured_points(self, name: str) -> list[CostPoint]:
        """The measured chain points of layer ``name``, by increasing MACs."""
        return sorted(self._layer(name).points, key=lambda p: p.macs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for plan.json.

        Returns:
            ``{target, unit, round_to, geometries: {key: fields}, layers: {name: {geometry, method, dense_ms,
            points: [{ranks, macs, ms}]}}}``; times in ms per call at the target batch, MACs per sample.
        """
        geometries = {c.geometry.key: asdict(c.geometry) for c in self.layers.values()}
        return {
            "target": asdict(self.target),
            "unit": "ms per call",
            "round_to": self.round_to,
            "geometries": geometries,
            "layers": {name: {"geometry": c.geometry.key, "method": c.method, "dense_ms": c.dense_ms,
                              "points": [{"ranks": list(p.ranks), "macs": p.macs, "ms": p.ms}
                                         for p in sorted(c.points, key=lambda p: p.macs)]}
                       for name, c in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostTable:
        """Rebuild a table written by `to_dict`."""
        def geometry(fields: Mapping[str, Any]) -> Geometry:
            tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
            return Geometry(**tuples)

        geometries = {key: geometry(fields) for key, fields in data["geometries"].items()}
        layers = {name: LayerCosts(geometries[entry["geometry"]], entry["method"], float(entry["dense_ms"]),
                                   tuple(CostPoint(tuple(p["ranks"]), int(p["macs"]), float(p["ms"]))
                                         for p in entry["points"]))
                  for name, entry in data["layers"].items()}
        return cls(Target(**data["target"]), layers, round_to=data.get("round_to"))


def measure_costs(requests: Sequence[Request], target: Target, *, cache: CostCache | None = None,
                  progress: bool | None = None, rounds: int = 8, min_time_s: float = 0.08) -> dict[Request, float]:
    """Time per call (ms) of each (geometry, method, ranks) on ``target``, from the cache or measured.

    Requests of one geometry that are not cached are timed together in one interleaved `time_graphs`
    call; the cache file is updated after each geometry, so an interrupted run keeps what it measured.

    Args:
        requests: (geometry, ``dense`` or a method, ranks) triples; duplicates are measured once.
        target: backend, batch and threads.
        cache: where timings are looked up and stored; None uses the default `CostCache`.
        progress: tqdm bar over the graphs measured: True shows it, False hides it, None shows it on a
            terminal only.
        rounds: timed rounds per geometry (`time_graphs`).
        min_time_s: timed seconds per graph (`time_graphs`).
    """
    from tqdm import tqdm

    cache = cache if cache is not None else CostCache()
    result: dict[Request, float] = {}
    missing: dict[Geometry, list[Request]] = {}
    for geometry, method, ranks in dict.fromkeys((g, m, tuple(int(r) for r in rk)) for g, m, rk in requests):
        timed = _TIMED_AS.get(method, method)
        ms = cache.get(target, geometry, timed, ranks)
        if ms is None:
            missing.setdefault(geometry, []).append((geometry, method, ranks))
        else:
            result[(geometry, method, ranks)] = ms
    total = sum(len(v) for v in missing.values())
    bar = tqdm(total=total, desc=f"layer costs on {target}", unit="graph", leave=False,
               disable=None if progress is None else not progress)
    try:
        for geometry, todo in missing.items():
            timed = {(_TIMED_AS.get(m, m), rk) for _, m, rk in todo}
            graphs = {f"{m}{list(rk)}": layer_onnx(geometry, m, rk, target.batch) for m, rk in sorted(timed)}
            times = time_graphs(graphs, target, rounds=rounds, min_time_s=min_time_s)
            for m, rk in sorted(timed):
                cache.put(target, geometry, m, rk, times[f"{m}{list(rk)}"])
            for request in todo:
                _, m, rk = request
                result[request] = times[f"{_TIMED_AS.get(m, m)}{list(rk)}"]
            cache.flush()
            bar.update(len(todo))
    finally:
        bar.close()
    return result


LayerSpec = tuple[str, nn.Module, "tuple[int, int] | None", int, "str | None"]


def profile_costs(layers: Sequence[LayerSpec], target: Target, *, cache: CostCache | None = None,
                  candidates: Sequence[float] = CANDIDATE_FRACTIONS, max_points: int = 8,
                  round_to: int | None = None, progress: bool | None = None, rounds: int = 8,
                  min_time_s: float = 0.08) -> CostTable:
    """Measure every layer's dense time and its factor chain on a grid of ranks, once per geometry.

    Args:
        layers: (name, module, in_hw, tokens, method) per layer: a Conv2d with its input (H, W) or a
            Linear with its rows per sample, and the method it would be factored with (``tucker2``,
            ``tt``, ``cp``, ``svd``; None to time it dense only).
        target: backend, batch and threads to measure on.
        cache: the persistent cost cache; None uses the default `CostCache`.
        candidates: fractions f of the mode sizes giving the rank grid (`candidate_ranks`).
        max_points: at most this many chain ranks per geometry and method.
        round_to: alignment of the grid's ranks (None: 8).
        progress: tqdm bar while measuring (True / False; None: only on a terminal).
        rounds: timed rounds per geometry (`time_graphs`).
        min_time_s: timed seconds per graph (`time_graphs`).

    Returns:
        A `CostTable` with every layer of ``layers``.

    Raises:
        ValueError: an unknown method, or a layer whose geometry cannot be timed (see `Geometry.of`).
        BackendUnavailable: the target's backend cannot run here.
    """
    sites: dict[str, tuple[Geometry, str | None]] = {}
    requests: list[Request] = []
    for name, module, in_hw, tokens, method in layers:
        try:
            geometry = Geometry.of(module, in_hw, tokens)
        except ValueError as err:
            raise ValueError(f"layer '{name}': {err}") from err
        method = None if method in (None, DENSE) else method
        sites[name] = (geometry, method)
        requests.append((geometry, DENSE, ()))
        if method is not None:
            for ranks in candidate_ranks(geometry, method, fractions=candidates, round_to=round_to,
                                         max_points=max_points):
                requests.append((geometry, method, ranks))
    times = measure_costs(requests, target, cache=cache, progress=progress, rounds=rounds, min_time_s=min_time_s)
    shared: dict[tuple[Geometry, str | None], LayerCosts] = {}
    for geometry, method in set(sites.values()):
        points = ()
        if method is not None:
            points = tuple(CostPoint(rk, chain_macs(geometry, _TIMED_AS.get(method, method), rk),
                                     times[(geometry, method, rk)])
                           for g, m, rk in times if g == geometry and m == method)
            points = tuple(sorted(points, key=lambda p: p.macs))
        shared[(geometry, method)] = LayerCosts(geometry, method, times[(geometry, DENSE, ())], points)
    return CostTable(target, {name: shared[site] for name, site in sites.items()},
                     round_to=round_to or _DEFAULT_ALIGN)
