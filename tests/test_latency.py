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
from tdexport.runtime import OrtRunner, Runner, TorchRunner
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



# ------------------------------------------------- device-time basis: real runners that time their own work


class StagedWorkRunner(Runner):
    """A real CPU runner shaped like a GPU one: a fixed host-side staging step, then the "device" work.

    ``infer_timed`` copies the batch into a staging buffer (host overhead that compression does not
    shrink, like host-device copies), then applies ``depth`` elementwise tanh passes to a work vector and
    reports the perf_counter time of those passes alone as its device time. Nothing is simulated: both
    times are measured around real work.
    """

    WORK_FLOATS = 100_000

    def __init__(self, name, depth, staging_floats, *, setup=False, drop_device_every=0):
        super().__init__(threads=None)
        self.name, self.depth = name, depth
        self.setup_on_first_call = setup
        self._staging_floats = staging_floats
        self._drop_every = drop_device_every
        self._calls = 0

    @property
    def device_timing(self):
        return self._loaded

    def load(self):
        self._stage = np.empty(self._staging_floats, np.float32)
        self._first_call_ms = None
        self._loaded = True

    def infer(self, batch):
        return self.infer_timed(batch)[0]

    def infer_timed(self, batch):
        self._check_loaded()
        start_ns = time.perf_counter_ns()
        flat = np.ascontiguousarray(batch, np.float32).reshape(-1)
        for offset in range(0, self._stage.size, flat.size):  # host-side staging: a fixed cost per call
            chunk = self._stage[offset:offset + flat.size]
            chunk[:] = flat[:chunk.size]
        x = np.resize(flat, self.WORK_FLOATS)
        device_start = time.perf_counter()
        for _ in range(self.depth):
            x = np.tanh(x * 0.5)
        device_ms = (time.perf_counter() - device_start) * 1e3
        self._calls += 1
        self._note_call(start_ns)
        if self._drop_every and self._calls % self._drop_every == 0:
            device_ms = None  # a GPU runner that failed to time one call
        return x[:batch.shape[0] * 2].reshape(batch.shape[0], 2), device_ms

    def close(self):
        self._loaded = False

    def device_info(self):
        return {"device": "cpu", "threads": None, "fixed_batch": None}


HOST_KEYS = {"original", "compressed", "speedup", "speedup_spread", "rounds", "p50_ratio", "speedup_method",
             "order", "round_size", "warmup_calls"}


def _median_ratio(pairs):
    return statistics.median([a / b for a, b in pairs if b > 0])


def test_device_times_become_the_speedup_basis():
    # Same staging cost, 8x the tanh passes: the device ratio is large, the host ratio much lower.
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    with StagedWorkRunner("big", 16, 100_000) as big, StagedWorkRunner("small", 2, 100_000) as small:
        assert big.device_timing and small.device_timing and big.first_call_ms is None
        res = measure_paired(big, small, x, warmup_s=0.05, iterations=12, duration_s=0.0, round_size=3)
        assert big.first_call_ms is not None and big.first_call_ms > 0  # recorded by the runner itself
    assert res.speedup_basis == "device" and res.device is not None
    dev_orig, dev_comp = res.device
    assert dev_orig.count == res.original.count == dev_comp.count == res.rounds * 3
    # The headline is the paired round-median ratio of the device times; the host pairing is kept beside it.
    assert len(res.device_round_medians) == res.rounds
    assert res.speedup == _median_ratio(res.device_round_medians)
    assert res.host_speedup == _median_ratio(res.round_medians)
    assert res.speedup_spread[0] <= res.speedup <= res.speedup_spread[1]
    assert res.host_speedup_spread[0] <= res.host_speedup <= res.host_speedup_spread[1]
    # Each device time was measured inside its host-timed call, so the device statistics never exceed them.
    for dev, host in ((dev_orig, res.original), (dev_comp, res.compressed)):
        assert dev.mean <= host.mean and dev.p50 <= host.p50 and dev.p99 <= host.p99
    assert res.device_p50_ratio == dev_orig.p50 / dev_comp.p50

    d = res.to_dict()
    assert set(d) == HOST_KEYS | {"speedup_basis", "host_speedup", "host_speedup_spread", "device"}
    assert d["speedup_basis"] == "device" and d["speedup"] == res.speedup
    assert d["host_speedup"] == res.host_speedup and d["host_speedup_spread"] == list(res.host_speedup_spread)
    assert d["p50_ratio"] == res.original.p50 / res.compressed.p50  # still host p50s, as on the CPU
    assert set(d["device"]) == {"original", "compressed", "p50_ratio"}
    assert d["device"]["original"] == dev_orig.to_dict() and d["device"]["original"]["unit"] == "ms"


def test_host_basis_when_one_runner_has_no_device_time():
    x = np.random.default_rng(0).standard_normal((2, *IMAGE)).astype(np.float32)
    with StagedWorkRunner("dev", 2, 1000) as dev, TorchRunner(conv_net(8), threads=1) as cpu:
        assert not cpu.device_timing and cpu.infer_timed(x)[1] is None
        res = measure_paired(dev, cpu, x, warmup_s=0.0, iterations=4, duration_s=0.0, round_size=2)
    assert res.speedup_basis == "host" and res.device is None and res.device_round_medians == ()
    assert res.speedup == res.host_speedup == _median_ratio(res.round_medians)
    assert set(res.to_dict()) == HOST_KEYS  # exactly the keys a CPU measurement always had


def test_a_missing_device_time_falls_back_to_host_time():
    x = np.ones((1, 1, 8, 8), np.float32)
    with StagedWorkRunner("a", 4, 1000) as a, StagedWorkRunner("b", 1, 1000, drop_device_every=5) as b:
        res = measure_paired(a, b, x, warmup_s=0.0, iterations=6, duration_s=0.0, round_size=3)
    assert res.speedup_basis == "host" and res.device is None
    assert res.speedup == _median_ratio(res.round_medians)
    assert "device" not in res.to_dict()


def test_setup_call_runs_apart_from_the_warm_up():
    log = []
    x = np.ones((1, 1, 8, 8), np.float32)
    with StagedWorkRunner("a", 4, 1000, setup=True) as a, StagedWorkRunner("b", 1, 1000) as b:
        ra, rb = recording(a, "A", log), recording(b, "B", log)
        ra.setup_on_first_call, rb.setup_on_first_call = True, False
        ra.device_timing = rb.device_timing = False  # the recorder forwards infer only: host basis
        res = measure_paired(ra, rb, x, warmup_s=0.0, iterations=2, duration_s=0.0, round_size=1)
    # One untimed setup call of A, then the warm-up (one call each), then the timed ABBA rounds.
    assert [e[0] for e in log[:3]] == ["A", "A", "B"]
    assert res.warmup_calls == (1, 1) and len(log) == 1 + 2 + 2 * res.rounds
    assert res.first_call_ms[1] is None and res.first_call_ms[0] == pytest.approx(
        (log[0][2] - log[0][1]) * 1e3, rel=0.5, abs=0.5)
    d = res.to_dict()
    assert set(d) == HOST_KEYS | {"first_call_ms"} and d["first_call_ms"] == list(res.first_call_ms)


class DeviceCostRunner(CostRunner):
    """Virtual-clock runner that also reports a device time: ``device(now_ns)`` ms per call."""

    def __init__(self, label, clock, cost, device, log, setup_ns=0):
        super().__init__(label, clock, cost, log)
        self.device, self.setup_ns, self.device_timing = device, setup_ns, True
        self.setup_on_first_call = setup_ns > 0
        self._primed = False

    def infer(self, batch):
        if not self._primed and self.setup_ns:
            self._primed = True
            self.clock.ns += self.setup_ns
            return np.zeros((batch.shape[0], 2), np.float32)
        return super().infer(batch)

    def infer_timed(self, batch):
        now = self.clock.ns
        return self.infer(batch), self.device(now)


def test_device_basis_arithmetic_is_exact(clock):
    log = []
    # Host: 3 ms vs 2 ms (fixed 1.5 ms overhead each); device: 1.5 ms vs 0.5 ms. A needs 1 s of setup.
    a = DeviceCostRunner("A", clock, lambda now: 3_000_000, lambda now: 1.5, log, setup_ns=1_000_000_000)
    b = DeviceCostRunner("B", clock, lambda now: 2_000_000, lambda now: 0.5, log)
    res = measure_paired(a, b, np.zeros((2, 1, 1, 1), np.float32), warmup_s=0.006, iterations=4,
                         duration_s=0.0, round_size=2)
    assert res.first_call_ms == (1000.0, None)  # the setup call is reported, not counted as warm-up
    assert res.warmup_calls == (2, 3)  # 6 ms each: A 2 calls of 3 ms, B 3 calls of 2 ms
    assert (res.rounds, res.speedup_basis) == (2, "device")
    assert res.speedup == 3.0 and res.speedup_spread == (3.0, 3.0)
    assert res.host_speedup == res.p50_ratio == 1.5 and res.host_speedup_spread == (1.5, 1.5)
    assert res.device_round_medians == ((1.5, 0.5),) * 2
    assert (res.device[0].p50, res.device[1].mean, res.device[1].throughput) == (1.5, 0.5, 2 * 1000 / 0.5)
    assert res.original.p50 == 3.0 and res.compressed.p50 == 2.0
    d = res.to_dict()
    assert d["speedup"] == 3.0 and d["host_speedup"] == 1.5 and d["device"]["p50_ratio"] == 3.0
    assert d["first_call_ms"] == [1000.0, None]


def test_cpu_measurement_is_unchanged_by_the_device_fields(clock):
    # CostRunner has no device_timing / setup_on_first_call: the old path, old keys, old numbers.
    a = CostRunner("A", clock, lambda now: 2_000_000, [])
    b = CostRunner("B", clock, lambda now: 500_000, [])
    res = measure_paired(a, b, np.zeros((1, 1, 1, 1), np.float32), warmup_s=0.0, iterations=2, duration_s=0.0,
                         round_size=1)
    assert (res.speedup_basis, res.device, res.first_call_ms) == ("host", None, None)
    assert res.speedup == res.host_speedup == 4.0 and set(res.to_dict()) == HOST_KEYS
    assert L.SPEEDUP_BASES == ("host", "device") and set(L.SPEEDUP_BASIS_TEXT) == set(L.SPEEDUP_BASES)
