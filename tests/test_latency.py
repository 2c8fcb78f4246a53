"""Latency statistics and paired ABBA timing: real runners for the call order, a virtual clock for the arithmetic."""

import math
import statistics
import time

import numpy as np
import pytest
import torch
from torch import nn

from tdexport.errors import UsageError
from tdexport.export.onnx import export_onnx
from tdexport.runtime import OrtRunner, TorchRunner
from tdexport.validate import latency as L
from tdexport.validate.latency import (
    SPEEDUP_METHOD,
    LatencyStats,
    PairedLatency,
    latency_stats,
    measure_paired,
    pin_threads,
)

IMAGE = (8, 8, 8)


class Recording:
    """Forwards to a real runner (name, threads, fixed_batch, infer) and logs (name, start, end) of each call."""

    def __init__(self, runner, log):
        self.runner, self.log = runner, log
        self.name, self.threads = runner.name, runner.threads
        self.fixed_batch = runner.fixed_batch

    def infer(self, batch):
        start = time.perf_counter()
        out = self.runner.infer(batch)
        self.log.append((self.label, start, time.perf_counter()))
        return out


def recording(runner, label, log):
    rec = Recording(runner, log)
    rec.label = label
    return rec


def conv_net(width):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(8, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )


@pytest.fixture(scope="module")
def fixed4_onnx(tmp_path_factory):
    """A real ONNX export of conv_net(8) whose batch dimension is fixed at 4."""
    path = tmp_path_factory.mktemp("fixed") / "fixed4.onnx"
    return export_onnx(conv_net(8), path, input_shape=IMAGE, batch=4).path


# ------------------------------------------------------------------------------------------ latency_stats


def test_latency_stats_exact_percentiles_and_throughput():
    s = latency_stats([5.0, 1.0, 4.0, 2.0, 3.0], batch=8)
    assert isinstance(s, LatencyStats)
    assert s.count == 5
    assert s.mean == 3.0
    assert s.stdev == pytest.approx(math.sqrt(2.5))  # sample stdev: sum of squares 10 / (5 - 1)
    assert s.p50 == 3.0
    # Linear interpolation: position (n - 1) * q = 3.6 for p90 -> 4 + 0.6 * (5 - 4).
    assert s.p90 == pytest.approx(4.6)
    assert s.p95 == pytest.approx(4.8)
    assert s.p99 == pytest.approx(4.96)
    assert s.throughput == pytest.approx(8 * 1000 / 3.0)
    np.testing.assert_allclose([s.p50, s.p90, s.p95, s.p99], np.percentile([1, 2, 3, 4, 5], [50, 90, 95, 99]))
    d = s.to_dict()
    assert d["unit"] == "ms"
    assert set(d) == {"unit", "count", "mean", "stdev", "p50", "p90", "p95", "p99", "throughput"}


def test_latency_stats_even_count_and_single_sample():
    s = latency_stats([10, 20, 30, 40], batch=1)
    assert s.p50 == 25.0
    assert s.throughput == pytest.approx(1000 / 25.0)
    one = latency_stats([2.5], batch=4)
    assert (one.count, one.mean, one.stdev, one.p50, one.p99) == (1, 2.5, 0.0, 2.5, 2.5)
    assert one.throughput == pytest.approx(1600.0)


@pytest.mark.parametrize("samples,batch", [([], 1), ([1.0, float("nan")], 1), ([-1.0], 1), ([1.0], 0)])
def test_latency_stats_rejects_bad_input(samples, batch):
    with pytest.raises(ValueError):
        latency_stats(samples, batch)


# ------------------------------------------------------------------- measure_paired: structure, real runners


def _expected_halves(rounds):
    """Names of the half-rounds in ABBA order: A B, B A, A B, ..."""
    return [name for r in range(rounds) for name in (("A", "B") if r % 2 == 0 else ("B", "A"))]


def test_measure_paired_runs_abba_rounds_on_real_runners():
    log = []
    x = np.random.default_rng(0).standard_normal((2, *IMAGE)).astype(np.float32)
    with TorchRunner(conv_net(16), threads=1) as big, TorchRunner(conv_net(8), threads=1) as small:
        a, b = recording(big, "A", log), recording(small, "B", log)
        rounds_seen = []
        t0 = time.perf_counter()
        res = measure_paired(a, b, x, warmup_s=0.05, iterations=20, duration_s=0.3, round_size=3,
                             progress=lambda r, elapsed: rounds_seen.append(r))
        wall = time.perf_counter() - t0

    assert isinstance(res, PairedLatency) and res.batch == 2 and res.round_size == 3
    warm = sum(res.warmup_calls)
    assert len(log) == warm + 2 * res.rounds * 3
    warm_names, timed = [e[0] for e in log[:warm]], log[warm:]
    # The warm-up alternates too: its first turn runs A then B; afterwards each runner has its call count.
    assert warm_names[:2] == ["A", "B"]
    assert (warm_names.count("A"), warm_names.count("B")) == res.warmup_calls
    # Timed phase: half-rounds of 3 calls of one model, in the order A B, B A, A B, ...; an even number of
    # rounds, so each model went first equally often.
    halves = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert all(len({e[0] for e in half}) == 1 for half in halves)
    assert [half[0][0] for half in halves] == _expected_halves(res.rounds)
    assert res.rounds % 2 == 0 and res.rounds >= 7  # 20 iterations need 7 rounds of 3, rounded up to even
    assert res.original.count == res.compressed.count == res.rounds * 3
    assert rounds_seen == list(range(1, res.rounds + 1))
    assert wall >= 0.3

    # What the code guarantees about the numbers, whatever this machine's speed.
    assert len(res.round_medians) == res.rounds
    ratios = [o / c for o, c in res.round_medians]
    assert res.speedup == statistics.median(ratios)
    if len(ratios) >= 10:  # the p10-p90 band of the per-round ratios, else their min-max
        assert res.speedup_spread == pytest.approx(tuple(np.percentile(ratios, [10, 90])), rel=1e-12)
    else:
        assert res.speedup_spread == (min(ratios), max(ratios))
    assert res.speedup_spread[0] <= res.speedup <= res.speedup_spread[1]
    assert res.p50_ratio == res.original.p50 / res.compressed.p50
    # With an odd round size every round median is a sample, and the overall median lies among them.
    assert min(o for o, _ in res.round_medians) <= res.original.p50 <= max(o for o, _ in res.round_medians)
    assert min(c for _, c in res.round_medians) <= res.compressed.p50 <= max(c for _, c in res.round_medians)
    assert res.original.throughput == pytest.approx(2 * 1000 / res.original.mean)

    d = res.to_dict()
    assert set(d) == {"original", "compressed", "speedup", "speedup_spread", "rounds", "p50_ratio",
                      "speedup_method", "order", "round_size", "warmup_calls"}
    assert d["speedup_spread"] == list(res.speedup_spread) and d["original"]["count"] == res.original.count
    assert (d["p50_ratio"], d["speedup_method"], d["order"]) == (res.p50_ratio, SPEEDUP_METHOD, "ABBA")
    assert d["warmup_calls"] == list(res.warmup_calls)


def test_measure_paired_rounds_up_to_an_even_round_count():
    x = np.zeros((1, *IMAGE), np.float32)
    with TorchRunner(conv_net(8)) as a, TorchRunner(conv_net(8)) as b:
        res = measure_paired(a, b, x, warmup_s=0.0, iterations=7, duration_s=0.0, round_size=3)
    assert res.rounds == 4  # three rounds of 3 reach 7 runs; a fourth makes the ABBA pairs complete
    assert res.original.count == res.compressed.count == 12
    assert res.warmup_calls == (1, 1)  # no warm-up time asked: still one call each
    assert res.speedup_spread[0] <= res.speedup <= res.speedup_spread[1]


@pytest.mark.parametrize("kwargs", [{"iterations": 0}, {"round_size": 0}, {"warmup_s": -1.0}, {"duration_s": -1}])
def test_measure_paired_rejects_bad_settings(kwargs):
    with TorchRunner(conv_net(8)) as runner:
        with pytest.raises(UsageError):
            measure_paired(runner, runner, np.zeros((1, *IMAGE), np.float32), **kwargs)
        with pytest.raises(UsageError):
            measure_paired(runner, runner, np.zeros(IMAGE, np.float32))


def test_measure_paired_at_a_fixed_batch_onnx(fixed4_onnx):
    with OrtRunner(fixed4_onnx, threads=1) as fixed, TorchRunner(conv_net(8), threads=1) as dynamic:
        assert fixed.fixed_batch == 4 and dynamic.fixed_batch is None
        with pytest.raises(UsageError) as info:
            measure_paired(dynamic, fixed, np.zeros((2, *IMAGE), np.float32), warmup_s=0, iterations=1,
                           duration_s=0)
        message = str(info.value)
        assert "compressed" in message and "ort-cpu" in message and "fixed batch size of 4" in message
        assert "batch 2" in message and info.value.exit_code == 2
        res = measure_paired(dynamic, fixed, np.zeros((4, *IMAGE), np.float32), warmup_s=0, iterations=2,
                             duration_s=0, round_size=1)
    assert res.batch == 4 and res.compressed.count == res.rounds == 2


def test_pin_threads_reports_what_was_pinned():
    previous = torch.get_num_threads()
    try:
        info = pin_threads(1)
        assert info["torch_threads"] == torch.get_num_threads() == 1
        assert info["cpu_count"] >= 1
        assert "omp_num_threads" in info and "cpus_available" in info
        with pytest.raises(UsageError):
            pin_threads(0)
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------- measure_paired: arithmetic, virtual clock

# A timing fixture for the timer, not a runtime: the clock only moves when a runner "works", by a cost
# the test chooses, so every number measure_paired derives is known exactly on any machine.


class VirtualClock:
    def __init__(self):
        self.ns = 0

    def __call__(self):
        return self.ns


class CostRunner:
    """``infer`` advances the virtual clock by ``cost(now_ns)`` nanoseconds and logs its label."""

    def __init__(self, label, clock, cost, log):
        self.name, self.threads, self.fixed_batch = label, None, None
        self.clock, self.cost, self.log = clock, cost, log

    def infer(self, batch):
        self.log.append(self.name)
        self.clock.ns += int(self.cost(self.clock.ns))
        return np.zeros((batch.shape[0], 2), np.float32)


@pytest.fixture
def clock(monkeypatch):
    c = VirtualClock()
    monkeypatch.setattr(L, "_now_ns", c)
    return c


def test_constant_costs_give_exact_numbers(clock):
    log = []
    a = CostRunner("A", clock, lambda now: 2_000_000, log)  # 2 ms per call
    b = CostRunner("B", clock, lambda now: 500_000, log)  # 0.5 ms per call
    res = measure_paired(a, b, np.zeros((3, 1, 1, 1), np.float32), warmup_s=0.01, iterations=7, duration_s=0.0,
                         round_size=3)
    # Warm-up: 10 ms each, A B, B A, ...: A needs 5 calls, B 20; after A's fifth call B runs alone.
    assert res.warmup_calls == (5, 20)
    assert log[:10] == ["A", "B", "B", "A", "A", "B", "B", "A", "A", "B"]
    assert log[10:25] == ["B"] * 15
    timed = log[25:]
    assert timed == [name for half in _expected_halves(4) for name in [half] * 3]
    assert (res.rounds, res.original.count, res.compressed.count) == (4, 12, 12)
    assert res.round_medians == ((2.0, 0.5),) * 4
    assert res.speedup == res.p50_ratio == 4.0 and res.speedup_spread == (4.0, 4.0)
    assert (res.original.p50, res.original.stdev, res.compressed.mean) == (2.0, 0.0, 0.5)
    assert res.compressed.throughput == 3 * 1000 / 0.5


def test_abba_order_cancels_a_drifting_machine(clock):
    # The machine slows down steadily (+5 % per 10 ms); A costs exactly twice B at any instant. Whichever
    # model runs second in a round runs on a slower machine, so a fixed A-then-B order biases every round
    # the same way; alternating the order biases half the rounds up and half down.
    log = []
    a = CostRunner("A", clock, lambda now: 2_000_000 * (1 + 5e-9 * now), log)
    b = CostRunner("B", clock, lambda now: 1_000_000 * (1 + 5e-9 * now), log)
    res = measure_paired(a, b, np.zeros((1, 1, 1, 1), np.float32), warmup_s=0.01, iterations=40, duration_s=0.0,
                         round_size=5)
    ratios = [o / c for o, c in res.round_medians]
    assert res.rounds == 8
    assert all(r < 2.0 for r in ratios[0::2])  # A first: B ran later, on a slower machine
    assert all(r > 2.0 for r in ratios[1::2])  # B first: the bias flips
    fixed_order_error = abs(ratios[0] - 2.0)
    assert fixed_order_error > 0.05
    assert abs(res.speedup - 2.0) < fixed_order_error / 10
    assert res.speedup_spread[0] < 2.0 < res.speedup_spread[1]


def test_rounds_without_a_measurable_compressed_time_give_no_ratio(clock):
    a = CostRunner("A", clock, lambda now: 1000, [])
    b = CostRunner("B", clock, lambda now: 0, [])  # a clock coarser than the call
    res = measure_paired(a, b, np.zeros((1, 1, 1, 1), np.float32), warmup_s=0, iterations=2, duration_s=0,
                         round_size=1)
    assert math.isnan(res.speedup) and all(math.isnan(v) for v in res.speedup_spread)
    assert math.isnan(res.p50_ratio) and res.compressed.p50 == 0.0 and res.original.p50 == 0.001

