"""Statistics of latency samples: per-model summaries and the ratios a speedup is read from.

Pure arithmetic on times already measured, no clock and no runner; `tdexport.validate.latency` times the
runners and builds its results from these (and re-exports the public names).

- `latency_stats` / `LatencyStats`: count, mean, sample stdev, p50/p90/p95/p99 (ms) and throughput of one
  model at one batch size; percentiles interpolate linearly between order statistics (``_percentile``).
- ``_ratio_summary``: the headline ``speedup``, the median over paired rounds of (original round median /
  compressed round median), and its spread (p10–p90 of the round ratios, or min–max for few rounds).
- `p50_ratio`: original p50 / compressed p50 over all timed runs, shown for reference only; when latency
  drifts during a measurement it differs from ``speedup``, which is the drift-robust one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LatencyStats",
    "latency_stats",
    "p50_ratio",
]

# Rounds needed before the p10–p90 band of per-round ratios means something; below it min–max is reported.
_MIN_ROUNDS_FOR_PERCENTILE_SPREAD = 10


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


def _ratio_summary(round_ms: Sequence[tuple[float, float]]) -> tuple[float, tuple[float, float]]:
    """(median of original / compressed per round, its spread) for per-round medians in ms.

    Rounds whose compressed median is 0 have no ratio; with no ratio at all both are NaN.
    """
    # A zero-length median only happens with a clock coarser than the call; that round has no ratio.
    ratios = [a / b for a, b in round_ms if b > 0]
    if not ratios:
        return math.nan, (math.nan, math.nan)
    ordered = sorted(ratios)
    if len(ordered) >= _MIN_ROUNDS_FOR_PERCENTILE_SPREAD:
        spread = (_percentile(ordered, 10), _percentile(ordered, 90))
    else:
        spread = (ordered[0], ordered[-1])
    return float(statistics.median(ratios)), (float(spread[0]), float(spread[1]))
