"""Latency of an original and a compressed model, measured as a pair so that machine drift cancels out.

A shared machine drifts: the same ONNX model measured 30 ms and 40 ms a minute apart here. Timing the
original model first and the compressed one afterwards would fold that drift into the speedup. So
`measure_paired` warms both runners up, then times them interleaved in short rounds and takes the
speedup from each round's pair of medians: drift moves both halves of a round alike.

Within a round one model necessarily runs first, and going first (or second) can itself cost time: a
cache the other model just evicted, a clock that ramps up during the round. The order therefore
alternates ABBA: round 1 runs original then compressed, round 2 compressed then original, and so on,
with an even number of rounds so each model goes first equally often. The warm-up alternates the same
way.

Two numbers come out per batch size and must not be confused:

- ``speedup``: the median over rounds of (original round median / compressed round median). This is the
  headline and what the ``min_speedup`` gate judges (`SPEEDUP_METHOD`).
- ``p50_ratio``: original p50 / compressed p50 over all timed runs. It is shown for reference; when
  latency drifts during the run it differs from ``speedup``, which is the drift-robust one.

Runners are duck-typed: anything with ``name`` and ``infer(batch) -> logits`` that is already loaded, and
optionally ``fixed_batch`` (see `tdexport.runtime`). Timing uses `time.perf_counter_ns` around ``infer``,
which returns host arrays, so device work is complete when the clock stops.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import UsageError

__all__ = [
    "ORDER",
    "SPEEDUP_METHOD",
    "SPEEDUP_METHOD_TEXT",
    "LatencyStats",
    "PairedLatency",
    "latency_stats",
    "measure_paired",
    "p50_ratio",
    "pin_threads",
]

# Machine-readable name of how ``speedup`` is computed, stored with every measurement and in the report.
SPEEDUP_METHOD = "median_paired_round_ratio"
SPEEDUP_METHOD_TEXT = ("speedup = median over paired rounds of (original round median / compressed round "
                       "median), rounds in ABBA order; the min_speedup gate uses it, not the ratio of the p50s")
# Order of the two models over consecutive rounds: A B, B A, A B, ...
ORDER = "ABBA"

# Rounds needed before the p10–p90 band of per-round ratios means something; below it min–max is reported.
_MIN_ROUNDS_FOR_PERCENTILE_SPREAD = 10

# The clock, looked up at each call rather than bound at import: the tests put a virtual clock here to
# check the arithmetic of a measurement exactly instead of relying on how fast this machine is.
_now_ns: Callable[[], int] = time.perf_counter_ns


class _Runner(Protocol):
    name: str

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class LatencyStats:
    """Latency statistics of one model at one batch size.

    Attributes:
        count: number of timed inferences.
        mean: mean latency per batch, ms.
        stdev: sample standard deviation (n − 1) of the latency, ms; 0.0 for a single sample.
        p50: median latency, ms (percentiles interpolate linearly between order statistics).
        p90: 90th percentile latency, ms.
        p95: 95th percentile latency, ms.
        p99: 99th percentile latency, ms.
        throughput: images per second at the mean latency, ``batch * 1000 / mean``.
    """

    count: int
    mean: float
    stdev: float
    p50: float
    p90: float
    p95: float
    p99: float
    throughput: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the fields above plus ``unit: "ms"`` (throughput is in images/s)."""
        return {
            "unit": "ms",
            "count": self.count,
            "mean": self.mean,
            "stdev": self.stdev,
            "p50": self.p50,
            "p90": self.p90,
            "p95": self.p95,
            "p99": self.p99,
            "throughput": self.throughput,
        }


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0–100) of sorted values, interpolating linearly between the two nearest ranks."""
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def latency_stats(samples_ms: Sequence[float], batch: int) -> LatencyStats:
    """Summarise per-batch latencies.

    Args:
        samples_ms: latency of each timed inference, ms per batch (at least one, all finite and ≥ 0).
        batch: images per inference (N of the (N, C, H, W) input), for the throughput.

    Returns:
        `LatencyStats` with mean, sample stdev (n − 1), linearly interpolated p50/p90/p95/p99 (ms), and
        throughput in images/s (``batch * 1000 / mean``; ``inf`` when the mean is 0).

    Raises:
        ValueError: no samples, a negative or non-finite sample, or ``batch`` < 1.
    """
    values = [float(v) for v in samples_ms]
    if not values:
        raise ValueError("latency_stats needs at least one sample")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError("latency samples must be finite and non-negative (ms)")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    ordered = sorted(values)
    mean = statistics.fmean(values)
    return LatencyStats(
        count=len(values),
        mean=mean,
        stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
        p50=_percentile(ordered, 50),
        p90=_percentile(ordered, 90),
        p95=_percentile(ordered, 95),
        p99=_percentile(ordered, 99),
        throughput=batch * 1000.0 / mean if mean > 0 else math.inf,
    )


def p50_ratio(original: LatencyStats | Mapping[str, Any], compressed: LatencyStats | Mapping[str, Any]) -> float:
    """Original p50 / compressed p50 (×); NaN when the compressed p50 is 0 or either is missing.

    Args:
        original: statistics of the original model (`LatencyStats` or its ``to_dict()``).
        compressed: statistics of the compressed model, same form.
    """
    a = original.get("p50") if isinstance(original, Mapping) else original.p50
    b = compressed.get("p50") if isinstance(compressed, Mapping) else compressed.p50
    if a is None or b is None or not b > 0:
        return math.nan
    return float(a) / float(b)


@dataclass(frozen=True)
class PairedLatency:
    """Latency of an original and a compressed model timed in interleaved ABBA rounds at one batch size.

    Attributes:
        batch: images per inference.
        original: statistics of the original model over all its timed runs (ms).
        compressed: statistics of the compressed model over all its timed runs (ms).
        speedup: median over rounds of (original round median / compressed round median); > 1 means faster.
            Rounds whose compressed median is 0 (a clock coarser than a call) have no ratio.
        speedup_spread: (low, high) of the per-round ratios: their 10th and 90th percentiles when there
            are at least 10 ratios, else their minimum and maximum. Always contains ``speedup``.
        rounds: number of paired rounds (even: each model went first in half of them).
        round_size: timed inferences of one model per half-round; ``count == rounds * round_size``.
        round_medians: per round, (original median, compressed median) in ms, in the order the rounds
            ran; round i (0-based) ran the original first when i is even.
        warmup_calls: untimed warm-up inferences of (original, compressed).
    """

    batch: int
    original: LatencyStats
    compressed: LatencyStats
    speedup: float
    speedup_spread: tuple[float, float]
    rounds: int
    round_size: int
    round_medians: tuple[tuple[float, float], ...]
    warmup_calls: tuple[int, int]

    @property
    def p50_ratio(self) -> float:
        """Original p50 / compressed p50 over all timed runs (×); NaN when the compressed p50 is 0."""
        return p50_ratio(self.original, self.compressed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the pairing (``round_medians`` stays out: hundreds of numbers per batch).

        Keys: ``original`` and ``compressed`` (see `LatencyStats.to_dict`), ``speedup`` (×, what the
        ``min_speedup`` gate uses), ``speedup_spread`` ([low, high]), ``rounds``, ``p50_ratio`` (×, original
        p50 / compressed p50), ``speedup_method`` (`SPEEDUP_METHOD`), ``order`` (``"ABBA"``), ``round_size``
        and ``warmup_calls`` ([original, compressed]).
        """
        return {
            "original": self.original.to_dict(),
            "compressed": self.compressed.to_dict(),
            "speedup": self.speedup,
            "speedup_spread": [self.speedup_spread[0], self.speedup_spread[1]],
            "rounds": self.rounds,
            "p50_ratio": self.p50_ratio,
            "speedup_method": SPEEDUP_METHOD,
            "order": ORDER,
            "round_size": self.round_size,
            "warmup_calls": [self.warmup_calls[0], self.warmup_calls[1]],
        }


def _timed_calls(runner: _Runner, batch: np.ndarray, calls: int, out: list[int]) -> list[int]:
    """Run ``calls`` inferences, appending each one's duration (ns) to ``out``; returns this round's ns."""
    this_round = []
    for _ in range(calls):
        start = _now_ns()
        runner.infer(batch)
        this_round.append(_now_ns() - start)
    out.extend(this_round)
    return this_round


def _order(round_index: int) -> tuple[int, int]:
    """Indices (0 original, 1 compressed) in the order they run in round ``round_index`` (0-based): ABBA."""
    return (0, 1) if round_index % 2 == 0 else (1, 0)


def _warm_up(runners: tuple[_Runner, _Runner], batch: np.ndarray, seconds: float) -> tuple[int, int]:
    """Alternate single untimed inferences (A B, B A, ...) until each runner spent ``seconds`` in ``infer``.

    Each runner runs at least once; one that has had its time sits out while the other catches up, so a
    slow model does not lengthen the warm-up of a fast one. Returns the calls of (original, compressed).
    """
    target = int(seconds * 1e9)
    spent, calls = [0, 0], [0, 0]
    turn = 0
    while True:
        for i in _order(turn):
            if calls[i] == 0 or spent[i] < target:
                start = _now_ns()
                runners[i].infer(batch)
                spent[i] += _now_ns() - start
                calls[i] += 1
        turn += 1
        if spent[0] >= target and spent[1] >= target:
            return calls[0], calls[1]


def _check_batch(runner: Any, role: str, n: int) -> None:
    fixed = getattr(runner, "fixed_batch", None)
    if fixed is not None and fixed != n:
        raise UsageError(
            f"the {role} model's {getattr(runner, 'name', 'runner')} graph has a fixed batch size of {fixed}, so "
            f"its latency at batch {n} cannot be measured; measure at batch {fixed} or export with a dynamic batch")


def measure_paired(
    original: _Runner,
    compressed: _Runner,
    batch_input: np.ndarray,
    *,
    warmup_s: float = 1.0,
    iterations: int = 50,
    duration_s: float = 3.0,
    round_size: int = 5,
    progress: Callable[[int, float], Any] | None = None,
) -> PairedLatency:
    """Time two loaded runners on the same input, interleaved in ABBA order, and derive a drift-robust speedup.

    Warm-up: single untimed inferences alternating A B, B A, ... until each runner has spent ``warmup_s``
    seconds in ``infer`` (at least one call each). Then timed rounds of ``round_size`` inferences per model:
    round 1 original then compressed, round 2 compressed then original, and so on, until each model has at
    least ``iterations`` timed runs, at least ``duration_s`` seconds have passed since timing started, and
    the number of rounds is even. Garbage collection is paused while timing so that a collection does not
    land in one model's half of a round.

    Args:
        original: loaded runner of the reference model (``infer(np.ndarray (N, C, H, W) float32) -> (N, K)``).
        compressed: loaded runner of the compressed model, same interface.
        batch_input: the input batch, shape (N, C, H, W); converted once to contiguous float32.
        warmup_s: untimed warm-up per runner, seconds spent in ``infer`` (at least one inference each).
        iterations: minimum timed inferences per runner.
        duration_s: minimum wall time of the timed phase, seconds.
        round_size: consecutive inferences of one runner per half-round.
        progress: optional callback ``progress(rounds_done, elapsed_s)`` called after every round.

    Returns:
        `PairedLatency` at batch N, latencies in ms per batch, throughput in images/s.

    Raises:
        UsageError: a non-positive ``iterations`` / ``round_size``, a negative time, an input that is not
            4-D with N ≥ 1, or a runner whose ``fixed_batch`` is not N (its graph or engine only runs that
            batch size: measure at that batch, or skip it, before calling).
    """
    if iterations < 1 or round_size < 1:
        raise UsageError(f"iterations and round_size must be at least 1 (got {iterations}, {round_size})")
    if warmup_s < 0 or duration_s < 0:
        raise UsageError(f"warmup_s and duration_s must be non-negative (got {warmup_s}, {duration_s})")
    batch = np.ascontiguousarray(batch_input, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[0] < 1:
        raise UsageError(f"latency input must have shape (N, C, H, W) with N >= 1, got {tuple(batch.shape)}")
    n = batch.shape[0]
    _check_batch(original, "original", n)
    _check_batch(compressed, "compressed", n)
    runners = (original, compressed)

    warmup_calls = _warm_up(runners, batch, warmup_s)

    times: tuple[list[int], list[int]] = ([], [])
    medians: list[tuple[float, float]] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = _now_ns()
        min_ns = int(duration_s * 1e9)
        while True:
            this_round: list[list[int]] = [[], []]
            for i in _order(len(medians)):
                this_round[i] = _timed_calls(runners[i], batch, round_size, times[i])
            medians.append((statistics.median(this_round[0]), statistics.median(this_round[1])))
            elapsed = _now_ns() - start
            if progress is not None:
                progress(len(medians), elapsed / 1e9)
            if len(medians) % 2 == 0 and len(times[0]) >= iterations and elapsed >= min_ns:
                break
    finally:
        if gc_was_enabled:
            gc.enable()

    round_ms = tuple((a / 1e6, b / 1e6) for a, b in medians)
    # A zero-length median only happens with a clock coarser than the call; that round has no ratio.
    ratios = [a / b for a, b in round_ms if b > 0]
    if ratios:
        ordered = sorted(ratios)
        speedup = float(statistics.median(ratios))
        if len(ordered) >= _MIN_ROUNDS_FOR_PERCENTILE_SPREAD:
            spread = (_percentile(ordered, 10), _percentile(ordered, 90))
        else:
            spread = (ordered[0], ordered[-1])
    else:
        speedup, spread = math.nan, (math.nan, math.nan)
    return PairedLatency(
        batch=n,
        original=latency_stats([t / 1e6 for t in times[0]], n),
        compressed=latency_stats([t / 1e6 for t in times[1]], n),
        speedup=speedup,
        speedup_spread=(float(spread[0]), float(spread[1])),
        rounds=len(medians),
        round_size=round_size,
        round_medians=round_ms,
        warmup_calls=warmup_calls,
    )


def pin_threads(n: int | None) -> dict[str, Any]:
    """Pin torch's intra-op thread count and describe the threading environment for the report.

    Runners carry their own thread settings (e.g. ONNX Runtime session options); this pins torch, which
    the PyTorch runners and any torch work between measurements use.

    Args:
        n: intra-op threads for torch (``torch.set_num_threads``); None leaves the current setting.

    Returns:
        ``{"torch_threads": int, "omp_num_threads": str | None (the OMP_NUM_THREADS variable),
        "cpu_count": int | None (os.cpu_count), "cpus_available": int | None (CPU affinity of this process)}``.

    Raises:
        UsageError: ``n`` < 1.
    """
    import torch

    if n is not None:
        if n < 1:
            raise UsageError(f"threads must be at least 1, got {n}")
        torch.set_num_threads(n)
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(affinity(0)) if affinity is not None else None,
    }
