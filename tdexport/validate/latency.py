"""Latency of an original and a compressed model, measured as a pair so that machine drift cancels out.

A shared machine drifts: the same ONNX model measured 30 ms and 40 ms a minute apart here. Timing the
original model first and the compressed one afterwards would fold that drift into the speedup. So
`measure_paired` warms both runners up, then times them interleaved in short rounds (A×k, B×k, A×k, ...)
and takes the speedup from each round's pair of medians: drift moves both halves of a round alike.

Runners are duck-typed: anything with ``name``, ``threads`` and ``infer(batch) -> logits`` that is already
loaded (see `tdexport.runtime`). Timing uses `time.perf_counter_ns` around ``infer``, which returns host
arrays, so device work is complete when the clock stops.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import UsageError

__all__ = ["LatencyStats", "PairedLatency", "latency_stats", "measure_paired", "pin_threads"]

# Rounds needed before the p10–p90 band of per-round ratios means something; below it min–max is reported.
_MIN_ROUNDS_FOR_PERCENTILE_SPREAD = 10


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


@dataclass(frozen=True)
class PairedLatency:
    """Latency of an original and a compressed model timed in interleaved rounds at one batch size.

    Attributes:
        batch: images per inference.
        original: statistics of the original model over all its timed runs (ms).
        compressed: statistics of the compressed model over all its timed runs (ms).
        speedup: median over rounds of (original round median / compressed round median); > 1 means faster.
        speedup_spread: (low, high) of the per-round ratios: their 10th and 90th percentiles when there
            are at least 10 rounds, else their minimum and maximum. Always contains ``speedup``.
        rounds: number of paired rounds.
    """

    batch: int
    original: LatencyStats
    compressed: LatencyStats
    speedup: float
    speedup_spread: tuple[float, float]
    rounds: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the pairing.

        Keys: ``original`` and ``compressed`` (see `LatencyStats.to_dict`), ``speedup`` (×),
        ``speedup_spread`` ([low, high]) and ``rounds``.
        """
        return {
            "original": self.original.to_dict(),
            "compressed": self.compressed.to_dict(),
            "speedup": self.speedup,
            "speedup_spread": [self.speedup_spread[0], self.speedup_spread[1]],
            "rounds": self.rounds,
        }


def _timed_calls(runner: _Runner, batch: np.ndarray, calls: int, out: list[int]) -> list[int]:
    """Run ``calls`` inferences, appending each one's duration (ns) to ``out``; returns this round's ns."""
    clock = time.perf_counter_ns
    this_round = []
    for _ in range(calls):
        start = clock()
        runner.infer(batch)
        this_round.append(clock() - start)
    out.extend(this_round)
    return this_round


def _warm_up(runner: _Runner, batch: np.ndarray, seconds: float) -> None:
    """Run inferences for at least ``seconds`` (and at least once): lazy allocations, caches, clocks."""
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    while True:
        runner.infer(batch)
        if time.perf_counter_ns() >= deadline:
            return


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
    """Time two loaded runners on the same input, interleaved, and derive a drift-robust speedup.

    Each runner first runs for ``warmup_s`` seconds (original, then compressed). Then rounds follow:
    ``round_size`` timed inferences of the original, then ``round_size`` of the compressed model, and
    so on, until each model has at least ``iterations`` timed runs *and* at least ``duration_s`` seconds
    have passed since timing started. Garbage collection is paused while timing so that a collection
    does not land in one model's half of a round.

    Args:
        original: loaded runner of the reference model (``infer(np.ndarray (N, C, H, W) float32) -> (N, K)``).
        compressed: loaded runner of the compressed model, same interface.
        batch_input: the input batch, shape (N, C, H, W); converted once to contiguous float32.
        warmup_s: untimed warm-up per runner, seconds (at least one inference each).
        iterations: minimum timed inferences per runner.
        duration_s: minimum wall time of the timed phase, seconds.
        round_size: consecutive inferences of one runner per half-round.
        progress: optional callback ``progress(rounds_done, elapsed_s)`` called after every round.

    Returns:
        `PairedLatency` at batch N, latencies in ms per batch, throughput in images/s.

    Raises:
        UsageError: a non-positive ``iterations`` / ``round_size``, a negative time, or an input that is
            not 4-D with N ≥ 1.
    """
    if iterations < 1 or round_size < 1:
        raise UsageError(f"iterations and round_size must be at least 1 (got {iterations}, {round_size})")
    if warmup_s < 0 or duration_s < 0:
        raise UsageError(f"warmup_s and duration_s must be non-negative (got {warmup_s}, {duration_s})")
    batch = np.ascontiguousarray(batch_input, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[0] < 1:
        raise UsageError(f"latency input must have shape (N, C, H, W) with N >= 1, got {tuple(batch.shape)}")

    _warm_up(original, batch, warmup_s)
    _warm_up(compressed, batch, warmup_s)

    times_a: list[int] = []
    times_b: list[int] = []
    ratios: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        min_ns = int(duration_s * 1e9)
        while True:
            round_a = _timed_calls(original, batch, round_size, times_a)
            round_b = _timed_calls(compressed, batch, round_size, times_b)
            med_b = statistics.median(round_b)
            # A zero-length median only happens with a clock coarser than the call; skip that round's ratio.
            if med_b > 0:
                ratios.append(statistics.median(round_a) / med_b)
            elapsed = time.perf_counter_ns() - start
            if progress is not None:
                progress(len(times_a) // round_size, elapsed / 1e9)
            if len(times_a) >= iterations and len(times_b) >= iterations and elapsed >= min_ns:
                break
    finally:
        if gc_was_enabled:
            gc.enable()

    n = batch.shape[0]
    rounds = len(times_a) // round_size
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
        original=latency_stats([t / 1e6 for t in times_a], n),
        compressed=latency_stats([t / 1e6 for t in times_b], n),
        speedup=speedup,
        speedup_spread=(float(spread[0]), float(spread[1])),
        rounds=rounds,
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
