"""Time a set of small ONNX graphs on a target, interleaved so that machine drift hits them all alike.

Each graph is loaded once in the runner `tdexport.validate` uses for the backend. The timing then runs in
rounds; every round visits every graph, in forward order on even rounds and backward order on odd ones
(the ABBA order of `tdexport.validate.latency` extended to many graphs), so no graph always runs right
after the same neighbour or always first. Within a round a graph runs a calibrated number of consecutive
calls (2 to 400, enough for about ``min_time_s / rounds`` seconds) and contributes the lower quartile of
those calls; its time is the lower quartile of its round values. Lower quartiles rather than medians
because other processes on a shared machine only ever add time, to single calls and in bursts spanning
several rounds: with the machine's load at 8 on 2 cores, half the calls of a 1 ms conv on two ONNX Runtime
threads took 8–13 ms, which moved its median but not its lower quartile. Rounds are added, up to twice the
requested number, while a graph's round values still spread widely. Garbage collection is paused while
timing.
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..runtime import OrtRunner, Runner
from .target import Target

__all__ = ["time_graphs"]

# Consecutive calls of one graph per round: enough for a quartile, bounded so a fast graph cannot stretch a round.
# The lower bound only binds for calls above ~5 ms (batch-32 convs of a ResNet-50), whose single calls are
# already long compared with scheduler noise; 2 rather than 5 cut resnet50's cold profiling at batch 32 by half.
_MIN_CALLS_PER_ROUND = 2
_MAX_CALLS_PER_ROUND = 400
# Other processes only ever add time (see the module docstring): a lower quartile estimates the undisturbed
# time while one lucky call or round still cannot decide it.
_ESTIMATE_QUANTILE = 0.25
_SETTLED_SPREAD = 0.2
_EXTRA_ROUNDS_FACTOR = 2
_now_ns: Callable[[], int] = time.perf_counter_ns


def _input_shape(model: bytes) -> tuple[int, ...]:
    import onnx

    proto = onnx.load_model_from_string(model)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if any(d.dim_value < 1 for d in dims):
        raise ValueError("layer graphs must have a fully static input shape")
    return tuple(int(d.dim_value) for d in dims)


def _runner(model: bytes, target: Target, tmp: Path) -> Runner:
    if target.backend == "trt":
        # TensorRT's runner builds from a file; the batch profile is exactly the target batch.
        from ..runtime import TrtRunner

        path = tmp / f"{len(list(tmp.iterdir()))}.onnx"
        path.write_bytes(model)
        return TrtRunner(path, max_batch=target.batch, threads=target.threads)
    return OrtRunner(model, provider=target.backend.removeprefix("ort-"), threads=target.threads)


def _timed(runner: Runner, x: np.ndarray, calls: int) -> list[int]:
    out = []
    for _ in range(calls):
        start = _now_ns()
        runner.infer(x)
        out.append(_now_ns() - start)
    return out


def time_graphs(graphs: Mapping[str, bytes], target: Target, *, rounds: int = 8, min_time_s: float = 0.08,
                warmup_s: float = 0.02, seed: int = 0) -> dict[str, float]:
    """Median latency per call of each graph on ``target``, measured interleaved.

    Args:
        graphs: name → serialized ONNX model with one input of static shape (batch included) and one
            output, e.g. from `tdexport.cost.graphs.layer_onnx`.
        target: backend and threads to run on (the graphs fix the batch).
        rounds: timed rounds, at least (rounded up to an even number: each order runs equally often); up to
            twice as many while the round values of a graph spread by more than 20 % (interquartile range).
        min_time_s: timed seconds per graph, at least; spread over the rounds by choosing how many
            consecutive calls a graph runs per round (2 to 400).
        warmup_s: untimed warm-up per graph (at least two calls), also used to calibrate the calls per round.
        seed: seed of the random inputs.

    Returns:
        name → lower quartile over rounds of the lower quartile of the round's call times, in ms per call (at
        the graph's batch).

    Raises:
        BackendUnavailable: the target's backend cannot run here.
        UsageError: a graph the runtime rejects.
    """
    if not graphs:
        return {}
    rounds = max(2, rounds + rounds % 2)
    names = list(graphs)
    rng = np.random.default_rng(seed)
    inputs: dict[tuple[int, ...], np.ndarray] = {}
    shapes = {}
    for name in names:
        shape = shapes[name] = _input_shape(graphs[name])
        if shape not in inputs:
            inputs[shape] = rng.standard_normal(shape).astype(np.float32)
    runners: dict[str, Runner] = {}
    with tempfile.TemporaryDirectory(prefix="tdexport-cost-") as tmp:
        try:
            for name in names:
                runner = _runner(graphs[name], target, Path(tmp))
                runner.load()
                runners[name] = runner
            return _rounds(runners, {n: inputs[shapes[n]] for n in names}, rounds, min_time_s, warmup_s)
        finally:
            for runner in runners.values():
                runner.close()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _unsettled(values: list[float]) -> bool:
    """Round values spread too widely (interquartile range above 20 % of the median) to trust yet."""
    mid = _quantile(values, 0.5)
    return mid > 0 and (_quantile(values, 0.75) - _quantile(values, 0.25)) > _SETTLED_SPREAD * mid


def _rounds(runners: Mapping[str, Runner], feeds: Mapping[str, np.ndarray], rounds: int, min_time_s: float,
            warmup_s: float) -> dict[str, float]:
    names = list(runners)
    # Warm-up alternates too: first calls allocate memory and arenas, which then stay warm for every graph.
    spent = dict.fromkeys(names, 0)
    calls: dict[str, list[int]] = {n: [] for n in names}
    target_ns = int(warmup_s * 1e9)
    turn = 0
    while any(spent[n] < target_ns or len(calls[n]) < 3 for n in names):
        for name in names if turn % 2 == 0 else reversed(names):
            if spent[name] < target_ns or len(calls[name]) < 3:
                t = _timed(runners[name], feeds[name], 1)[0]
                spent[name] += t
                calls[name].append(t)
        turn += 1
    # Calibrate on the fastest warm-up call: a call slowed by another process must not shrink the rounds.
    round_ns = min_time_s * 1e9 / rounds
    size = {n: min(_MAX_CALLS_PER_ROUND, max(_MIN_CALLS_PER_ROUND, math.ceil(round_ns / max(min(calls[n][1:]), 1))))
            for n in names}

    values: dict[str, list[float]] = {n: [] for n in names}
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        r = 0
        while r < rounds or (r < _EXTRA_ROUNDS_FACTOR * rounds and any(_unsettled(m) for m in values.values())):
            for _ in range(2):  # rounds come in forward/backward pairs
                for name in names if r % 2 == 0 else reversed(names):
                    calls_ns = [float(t) for t in _timed(runners[name], feeds[name], size[name])]
                    values[name].append(_quantile(calls_ns, _ESTIMATE_QUANTILE))
                r += 1
    finally:
        if was_enabled:
            gc.enable()
    return {n: _quantile(values[n], _ESTIMATE_QUANTILE) / 1e6 for n in names}
