"""Latency statistics, paired interleaved timing with real torch models, and accuracy evaluation."""

import itertools
import math
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tdexport.errors import UsageError
from tdexport.validate.accuracy import Accuracy, evaluate, topk_hits
from tdexport.validate.latency import LatencyStats, PairedLatency, latency_stats, measure_paired, pin_threads


class TorchRunner:
    """The runner interface (name, threads, load, infer, close, context manager) around an nn.Module."""

    def __init__(self, name, module, *, threads=1, fixed_batch=None):
        self.name = name
        self.threads = threads
        self.fixed_batch = fixed_batch
        self._module = module
        self.loaded = False
        self.shapes = []

    def load(self):
        self._module.eval()
        self.loaded = True
        return self

    def infer(self, batch):
        assert self.loaded
        assert batch.dtype == np.float32
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            raise RuntimeError(f"{self.name} accepts only batch {self.fixed_batch}, got {batch.shape[0]}")
        self.shapes.append(batch.shape)
        with torch.inference_mode():
            return self._module(torch.from_numpy(batch)).numpy()

    def close(self):
        self.loaded = False

    def __enter__(self):
        return self.load()

    def __exit__(self, *exc):
        self.close()


class Recording:
    """Wraps a runner and logs (name, start, end) of each infer call into a shared list."""

    def __init__(self, runner, log):
        self.runner, self.log = runner, log
        self.name, self.threads = runner.name, runner.threads

    def infer(self, batch):
        start = time.perf_counter()
        out = self.runner.infer(batch)
        self.log.append((self.name, start, time.perf_counter()))
        return out


def conv_net(width):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(8, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


# ------------------------------------------------------------------------------------------ measure_paired


def test_measure_paired_cheaper_model_is_faster_and_rounds_interleave():
    log = []
    x = np.random.default_rng(0).standard_normal((2, 8, 24, 24)).astype(np.float32)
    with TorchRunner("dense", conv_net(64)) as big, TorchRunner("small", conv_net(32)) as small:
        a, b = Recording(big, log), Recording(small, log)
        rounds_seen = []
        t0 = time.perf_counter()
        res = measure_paired(a, b, x, warmup_s=0.2, iterations=20, duration_s=0.8, round_size=4,
                             progress=lambda r, elapsed: rounds_seen.append((r, elapsed)))
        wall = time.perf_counter() - t0

    assert isinstance(res, PairedLatency)
    assert res.batch == 2
    assert res.original.count >= 20 and res.compressed.count >= 20
    assert res.original.count == res.compressed.count == res.rounds * 4
    assert res.speedup > 1.0  # 4x fewer MACs in the convolutions
    low, high = res.speedup_spread
    assert low <= res.speedup <= high
    assert res.rounds >= 10  # so the spread is the p10-p90 band, not min-max
    assert res.original.throughput == pytest.approx(2 * 1000 / res.original.mean)
    assert wall >= 2 * 0.2 + 0.8

    # Runs of consecutive calls: warm-up of A, warm-up of B, then A x4, B x4, A x4, ...
    runs = [(name, list(group)) for name, group in itertools.groupby(log, key=lambda e: e[0])]
    assert [name for name, _ in runs[:2]] == ["dense", "small"]
    for _, calls in runs[:2]:
        assert calls[-1][2] - calls[0][1] >= 0.2  # warmed up by time
    timed = runs[2:]
    assert [name for name, _ in timed] == ["dense", "small"] * res.rounds
    assert all(len(calls) == 4 for _, calls in timed)
    assert timed[-1][1][-1][2] - timed[0][1][0][1] >= 0.8  # the timed phase lasted duration_s
    assert [r for r, _ in rounds_seen] == list(range(1, res.rounds + 1))

    d = res.to_dict()
    assert set(d) == {"original", "compressed", "speedup", "speedup_spread", "rounds"}
    assert d["speedup_spread"] == [low, high] and d["original"]["count"] == res.original.count


def test_measure_paired_iterations_bound_and_min_max_spread():
    x = np.zeros((1, 8, 8, 8), np.float32)
    with TorchRunner("a", conv_net(8)) as a, TorchRunner("b", conv_net(8)) as b:
        res = measure_paired(a, b, x, warmup_s=0.0, iterations=7, duration_s=0.0, round_size=3)
    assert res.original.count == res.compressed.count == 9  # three rounds of 3 reach 7
    assert res.rounds == 3
    assert res.speedup_spread[0] <= res.speedup <= res.speedup_spread[1]


@pytest.mark.parametrize("kwargs", [{"iterations": 0}, {"round_size": 0}, {"warmup_s": -1.0}])
def test_measure_paired_rejects_bad_settings(kwargs):
    runner = TorchRunner("a", conv_net(8)).load()
    with pytest.raises(UsageError):
        measure_paired(runner, runner, np.zeros((1, 8, 8, 8), np.float32), **kwargs)
    with pytest.raises(UsageError):
        measure_paired(runner, runner, np.zeros((8, 8, 8), np.float32))


def test_pin_threads_reports_what_was_pinned():
    info = pin_threads(1)
    assert info["torch_threads"] == torch.get_num_threads() == 1
    assert info["cpu_count"] >= 1
    assert "omp_num_threads" in info and "cpus_available" in info
    with pytest.raises(UsageError):
        pin_threads(0)


# ------------------------------------------------------------------------------------------ accuracy

# 12 samples, 7 classes. Sample i is the one-hot image e_i (3 x 2 x 2 = 12 features); a bias-free
# linear layer maps it to column i of W, whose class scores are 7, 6, ..., 1 in the order PERMS[i].
# Each label is put at a chosen position in that ranking, so top-1/top-5 are known exactly.
K = 7
RANK_OF_LABEL = [0, 0, 1, 4, 5, 6, 2, 0, 3, 4, 6, 0]  # 4 at rank 0 -> top-1 4/12; 9 below rank 5 -> top-5 9/12


def _accuracy_data():
    rng = np.random.default_rng(1)
    weight = np.zeros((K, 12), np.float32)
    labels = []
    for i, rank in enumerate(RANK_OF_LABEL):
        order = rng.permutation(K)
        weight[order, i] = np.arange(K, 0, -1)
        labels.append(order[rank])
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, K, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(weight))
    images = torch.eye(12).reshape(12, 3, 2, 2)
    return model, images, torch.tensor(labels)


def test_topk_hits_breaks_ties_like_argmax():
    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert topk_hits(logits, np.array([1, 2]), 1) == (0, 0)
    assert topk_hits(logits, np.array([0, 1]), 1) == (2, 2)
    assert topk_hits(logits, np.array([1, 2]), 5) == (0, 2)  # k is clipped to K = 3


def test_evaluate_exact_top1_top5():
    model, images, labels = _accuracy_data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=5)
    with TorchRunner("linear", model) as runner:
        acc = evaluate(runner, loader)
    assert isinstance(acc, Accuracy)
    assert acc.samples == 12
    assert acc.top1 == pytest.approx(100 * 4 / 12)
    assert acc.top5 == pytest.approx(100 * 9 / 12)
    assert acc.to_dict() == {"top1": acc.top1, "top5": acc.top5, "samples": 12}


def test_evaluate_pads_to_fixed_batch_and_honours_limit():
    model, images, labels = _accuracy_data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=5)  # batches of 5, 5, 2
    with TorchRunner("fixed", model, fixed_batch=4) as runner:
        acc = evaluate(runner, loader)
        assert all(shape[0] == 4 for shape in runner.shapes)
        assert len(runner.shapes) == 5  # 5 -> 4 + 1(padded), 5 -> 4 + 1(padded), 2 -> 2(padded)
    assert (acc.samples, acc.top1, acc.top5) == (12, pytest.approx(100 * 4 / 12), pytest.approx(100 * 9 / 12))

    with TorchRunner("fixed", model, fixed_batch=4) as runner:
        first7 = evaluate(runner, loader, limit=7)
    # Ranks of the first 7 labels: 0, 0, 1, 4, 5, 6, 2 -> top-1 2/7, top-5 5/7.
    assert (first7.samples, first7.top1, first7.top5) == (7, pytest.approx(200 / 7), pytest.approx(500 / 7))


def test_evaluate_rejects_empty_loader_and_foreign_labels():
    model, images, labels = _accuracy_data()
    with TorchRunner("linear", model) as runner:
        with pytest.raises(UsageError, match="no samples"):
            evaluate(runner, [])
        with pytest.raises(UsageError, match="outside"):
            evaluate(runner, [(images, labels + K)])
