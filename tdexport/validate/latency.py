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

This module holds the timing: `measure_paired`, its result `PairedLatency`, the names of the speedup
method and basis, and `pin_threads`. The statistics of the samples (`LatencyStats`, `latency_stats`,
`p50_ratio` and the per-round ratio summary) are in `tdexport.validate.latency_stats` and re-exported here.
Two numbers come out per batch size and must not be confused:

- ``speedup``: the median over rounds of (original round median / compressed round median). This is the
  headline and what the ``min_speedup`` gate judges (`SPEEDUP_METHOD`).
- ``p50_ratio``: original p50 / compressed p50 over all timed runs. It is shown for reference; when
  latency drifts during the run it differs from ``speedup``, which is the drift-robust one.

Runners are duck-typed: anything with ``name`` and ``infer(batch) -> logits`` that is already loaded, and
optionally ``fixed_batch`` (see `tdexport.runtime`). Timing uses `time.perf_counter_ns` around ``infer``,
which returns host arrays, so device work is complete when the clock stops.

GPU runners time themselves as well (``device_timing`` True, ``infer_timed(batch) -> (logits, device
ms)``): CUDA events recorded on the runner's stream around the enqueued inference, trtexec's "GPU compute
time". When both runners do, each timed call also yields a device time, the pair gets ``device`` statistics
beside the host ones and the headline ``speedup`` is taken from the device times (``speedup_basis:
"device"``), while the host-time speedup stays as ``host_speedup``: on a GPU the host time adds copies,
launch overhead and synchronisation that a compressed model does not shrink. Otherwise (CPU) everything is
host time (``speedup_basis`` "host") and the result has exactly the keys it always had. A runner whose first
call at a new shape does one-time setup (``setup_on_first_call``: engine build, cuDNN autotuning) gets one
untimed call before the warm-up, reported as ``first_call_ms`` and not counted as warm-up.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import UsageError
from .latency_stats import LatencyStats, _ratio_summary, latency_stats, p50_ratio

__all__ = [
    "ORDER",
    "SPEEDUP_BASES",
    "SPEEDUP_BASIS_TEXT",
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

# Which per-call time the paired round ratios of ``speedup`` are taken from.
SPEEDUP_BASES = ("host", "device")
SPEEDUP_BASIS_TEXT = {
    "host": "per-call latency measured on the host (perf_counter around each inference, which returns host "
            "arrays: copies and synchronisation included)",
    "device": "per-call GPU time between CUDA events recorded on the runner's stream around the enqueued "
              "inference (trtexec's GPU compute time: host-device copies excluded); the host-time speedup is "
              "kept as host_speedup",
}

# The clock, looked up at each call rather than bound at import: the tests put a virtual clock here to
# check the arithmetic of a measurement exactly instead of relying on how fast this machine is.
_now_ns: Callable[[], int] = time.perf_counter_ns


class _Runner(Protocol):
    name: str

    def infer(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PairedLatency:
    """Latency of an original and a compressed model timed in interleaved ABBA rounds at one batch size.

    Attributes:
        batch: images per inference.
        original: statistics of the original model over all its timed runs (ms, host time).
        compressed: statistics of the compressed model over all its timed runs (ms, host time).
        speedup: median over rounds of (original round median / compressed round median) of the
            ``speedup_basis`` times; > 1 means faster. Rounds whose compressed median is 0 (a clock coarser
            than a call) have no ratio.
        speedup_spread: (low, high) of the per-round ratios: their 10th and 90th percentiles when there
            are at least 10 ratios, else their minimum and maximum. Always contains ``speedup``.
        rounds: number of paired rounds (even: each model went first in half of them).
        round_size: timed inferences of one model per half-round; ``count == rounds * round_size``.
        round_medians: per round, (original median, compressed median) host times in ms, in the order the
            rounds ran; round i (0-based) ran the original first when i is even.
        warmup_calls: untimed warm-up inferences of (original, compressed).
        speedup_basis: ``"host"`` or ``"device"`` (`SPEEDUP_BASIS_TEXT`): device when both runners reported
            a device time for every timed call.
        host_speedup: the paired round ratio median of host times (equal to ``speedup`` on the host basis;
            None when not measured by `measure_paired`).
        host_speedup_spread: the spread of the host ratios, as ``speedup_spread`` (None likewise).
        device: (original, compressed) device-time statistics (ms), or None on the host basis.
        device_round_medians: per round, (original, compressed) device-time medians in ms (empty on host).
        first_call_ms: host ms of the untimed first call at this batch, per model, for runners with
            ``setup_on_first_call`` (None for the others); None when neither has it.
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
    speedup_basis: str = "host"
    host_speedup: float | None = None
    host_speedup_spread: tuple[float, float] | None = None
    device: tuple[LatencyStats, LatencyStats] | None = None
    device_round_medians: tuple[tuple[float, float], ...] = ()
    first_call_ms: tuple[float | None, float | None] | None = None

    @property
    def p50_ratio(self) -> float:
        """Original p50 / compressed p50 over all timed runs (×, host time); NaN when the compressed p50 is 0."""
        return p50_ratio(self.original, self.compressed)

    @property
    def device_p50_ratio(self) -> float:
        """Original / compressed p50 of the device times (×); NaN without device times."""
        return p50_ratio(self.device[0], self.device[1]) if self.device is not None else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the pairing (``round_medians`` stays out: hundreds of numbers per batch).

        Keys: ``original`` and ``compressed`` (host time, see `LatencyStats.to_dict`), ``speedup`` (×, what
        the ``min_speedup`` gate uses), ``speedup_spread`` ([low, high]), ``rounds``, ``p50_ratio`` (×, original
        p50 / compressed p50, host time), ``speedup_method`` (`SPEEDUP_METHOD`), ``order`` (``"ABBA"``),
        ``round_size`` and ``warmup_calls`` ([original, compressed]). On the host basis that is all (the
        keys every CPU measurement has always had). On the device basis it adds ``speedup_basis``
        (``"device"``), ``host_speedup`` and ``host_speedup_spread`` (the same pairing on host times) and
        ``device`` = ``{"original": stats, "compressed": stats, "p50_ratio": ×}`` (ms); ``first_call_ms``
        ([original, compressed], ms or None) appears whenever a runner had an untimed setup call.
        """
        out: dict[str, Any] = {
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
        if self.speedup_basis == "device" and self.device is not None:
            host_spread = self.host_speedup_spread or (math.nan, math.nan)
            out.update({
                "speedup_basis": "device",
                "host_speedup": self.host_speedup,
                "host_speedup_spread": [host_spread[0], host_spread[1]],
                "device": {"original": self.device[0].to_dict(), "compressed": self.device[1].to_dict(),
                           "p50_ratio": self.device_p50_ratio},
            })
        if self.first_call_ms is not None:
            out["first_call_ms"] = [self.first_call_ms[0], self.first_call_ms[1]]
        return out


def _timed_calls(runner: _Runner, batch: np.ndarray, calls: int, out: list[int],
                 device_out: list[float | None] | None = None) -> tuple[list[int], list[float | None]]:
    """Run ``calls`` inferences, appending each one's host duration (ns) to ``out``.

    With ``device_out`` the runner's ``infer_timed`` is called instead of ``infer`` (the host clock spans
    the same call) and each call's device time (ms, or None) is appended there. Returns this round's
    (host ns, device ms) lists.
    """
    this_round: list[int] = []
    this_device: list[float | None] = []
    for _ in range(calls):
        if device_out is None:
            start = _now_ns()
            runner.infer(batch)
            this_round.append(_now_ns() - start)
        else:
            start = _now_ns()
            _, device_ms = runner.infer_timed(batch)  # type: ignore[attr-defined]
            this_round.append(_now_ns() - start)
            this_device.append(device_ms)
    out.extend(this_round)
    if device_out is not None:
        device_out.extend(this_device)
    return this_round, this_device


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


def _first_calls(runners: tuple[_Runner, _Runner], batch: np.ndarray) -> tuple[float | None, float | None] | None:
    """One untimed call at this batch for each runner with ``setup_on_first_call`` (original first).

    Returns each such call's host ms (None for runners without setup), or None when neither runner has it,
    so CPU measurements run exactly the calls they always did.
    """
    flags = [bool(getattr(r, "setup_on_first_call", False)) for r in runners]
    if not any(flags):
        return None
    spent: list[float | None] = []
    for runner, flag in zip(runners, flags, strict=True):
        if flag:
            start = _now_ns()
            runner.infer(batch)
            spent.append((_now_ns() - start) / 1e6)
        else:
            spent.append(None)
    return spent[0], spent[1]


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

    Setup: a runner with ``setup_on_first_call`` (GPU: engine build, cuDNN autotuning at a new shape) first
    gets one untimed call at this batch, reported as ``first_call_ms`` and not counted below. Warm-up:
    single untimed inferences alternating A B, B A, ... until each runner has spent ``warmup_s`` seconds in
    ``infer`` (at least one call each). Then timed rounds of ``round_size`` inferences per model: round 1
    original then compressed, round 2 compressed then original, and so on, until each model has at least
    ``iterations`` timed runs, at least ``duration_s`` seconds have passed since timing started, and the
    number of rounds is even. Garbage collection is paused while timing so that a collection does not land
    in one model's half of a round.

    When both runners have ``device_timing``, the timed calls go through ``infer_timed`` and each also
    yields a device time; if every call gave one, ``speedup`` / ``speedup_spread`` come from the device
    times (``speedup_basis`` "device", ``device`` statistics), and the host-time pairing is kept as
    ``host_speedup`` / ``host_speedup_spread``. Otherwise everything is host time, as for CPU runners.

    Args:
        original: loaded runner of the reference model (``infer(np.ndarray (N, C, H, W) float32) -> (N, K)``;
            optionally ``device_timing``, ``infer_timed``, ``setup_on_first_call`` as `tdexport.runtime.Runner`).
        compressed: loaded runner of the compressed model, same interface.
        batch_input: the input batch, shape (N, C, H, W); converted once to contiguous float32.
        warmup_s: untimed warm-up per runner, seconds spent in ``infer`` (at least one inference each).
        iterations: minimum timed inferences per runner.
        duration_s: minimum wall time of the timed phase, seconds.
        round_size: consecutive inferences of one runner per half-round.
        progress: optional callback ``progress(rounds_done, elapsed_s)`` called after every round.

    Returns:
        `PairedLatency` at batch N, latencies in ms per batch (host and, on the device basis, device),
        throughput in images/s.

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
    use_device = all(bool(getattr(r, "device_timing", False)) for r in runners)

    first_call_ms = _first_calls(runners, batch)
    warmup_calls = _warm_up(runners, batch, warmup_s)

    times: tuple[list[int], list[int]] = ([], [])
    device_times: tuple[list[float | None], list[float | None]] = ([], [])
    medians: list[tuple[float, float]] = []
    device_medians: list[tuple[float, float]] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = _now_ns()
        min_ns = int(duration_s * 1e9)
        while True:
            this_round: list[list[int]] = [[], []]
            this_device: list[list[float | None]] = [[], []]
            for i in _order(len(medians)):
                this_round[i], this_device[i] = _timed_calls(runners[i], batch, round_size, times[i],
                                                             device_times[i] if use_device else None)
            medians.append((statistics.median(this_round[0]), statistics.median(this_round[1])))
            if use_device and all(v is not None for half in this_device for v in half):
                device_medians.append((float(statistics.median(this_device[0])),
                                       float(statistics.median(this_device[1]))))
            elapsed = _now_ns() - start
            if progress is not None:
                progress(len(medians), elapsed / 1e9)
            if len(medians) % 2 == 0 and len(times[0]) >= iterations and elapsed >= min_ns:
                break
    finally:
        if gc_was_enabled:
            gc.enable()

    round_ms = tuple((a / 1e6, b / 1e6) for a, b in medians)
    host_speedup, host_spread = _ratio_summary(round_ms)
    result = {
        "batch": n,
        "original": latency_stats([t / 1e6 for t in times[0]], n),
        "compressed": latency_stats([t / 1e6 for t in times[1]], n),
        "speedup": host_speedup,
        "speedup_spread": host_spread,
        "rounds": len(medians),
        "round_size": round_size,
        "round_medians": round_ms,
        "warmup_calls": warmup_calls,
        "host_speedup": host_speedup,
        "host_speedup_spread": host_spread,
        "first_call_ms": first_call_ms,
    }
    # The device basis needs a device time for every timed call of both runners.
    if use_device and len(device_medians) == len(medians):
        device_speedup, device_spread = _ratio_summary(device_medians)
        result.update(
            speedup=device_speedup,
            speedup_spread=device_spread,
            speedup_basis="device",
            device=(latency_stats(device_times[0], n), latency_stats(device_times[1], n)),  # type: ignore[arg-type]
            device_round_medians=tuple(device_medians),
        )
    return PairedLatency(**result)


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
