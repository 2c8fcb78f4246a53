"""Accuracy: exact top-1/top-5 on real runners, fixed-batch ONNX graphs, class subsets, class-count checks."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tdexport.errors import UsageError
from tdexport.export.onnx import export_onnx
from tdexport.runtime import OrtRunner, TorchRunner
from tdexport.validate.accuracy import Accuracy, evaluate, infer_batches, topk_hits

# 12 samples, 7 classes. Sample i is the one-hot image e_i (3 x 2 x 2 = 12 features); a bias-free
# linear layer maps it to column i of W, whose class scores are 7, 6, ..., 1 in a seeded random order.
# Each label is put at a chosen position in that ranking, so top-1/top-5 are known exactly.
K = 7
RANK_OF_LABEL = [0, 0, 1, 4, 5, 6, 2, 0, 3, 4, 6, 0]  # 4 at rank 0 -> top-1 4/12; 9 below rank 5 -> top-5 9/12
IMAGE = (3, 2, 2)


def linear_model(weight):
    """Flatten + bias-free Linear whose logits for the one-hot image e_i are column i of ``weight``."""
    weight = np.asarray(weight, np.float32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(weight))
    return model.eval()


def one_hot_images(n):
    return torch.eye(12)[:n].reshape(n, *IMAGE)


def _accuracy_data():
    rng = np.random.default_rng(1)
    weight = np.zeros((K, 12), np.float32)
    labels = []
    for i, rank in enumerate(RANK_OF_LABEL):
        order = rng.permutation(K)
        weight[order, i] = np.arange(K, 0, -1)
        labels.append(order[rank])
    return linear_model(weight), one_hot_images(12), torch.tensor(labels)


class Recording:
    """Forwards to a real runner and records the batch size of every call."""

    def __init__(self, runner):
        self.runner, self.name, self.fixed_batch = runner, runner.name, runner.fixed_batch
        self.sizes = []

    def infer(self, batch):
        self.sizes.append(batch.shape[0])
        return self.runner.infer(batch)


@pytest.fixture(scope="module")
def fixed4_onnx(tmp_path_factory):
    """The 7-class linear model exported to ONNX with its batch dimension fixed at 4."""
    model, _, _ = _accuracy_data()
    return export_onnx(model, tmp_path_factory.mktemp("acc") / "fixed4.onnx", input_shape=IMAGE, batch=4).path


def test_topk_hits_breaks_ties_like_argmax():
    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert topk_hits(logits, np.array([1, 2]), 1) == (0, 0)
    assert topk_hits(logits, np.array([0, 1]), 1) == (2, 2)
    assert topk_hits(logits, np.array([1, 2]), 5) == (0, 2)  # k is clipped to K = 3


def test_evaluate_exact_top1_top5():
    model, images, labels = _accuracy_data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=5)
    with TorchRunner(model) as runner:
        acc = evaluate(runner, loader)
    assert isinstance(acc, Accuracy)
    assert acc.samples == 12
    assert acc.top1 == pytest.approx(100 * 4 / 12)
    assert acc.top5 == pytest.approx(100 * 9 / 12)
    assert acc.to_dict() == {"top1": acc.top1, "top5": acc.top5, "samples": 12}


def test_evaluate_a_fixed_batch_onnx_pads_and_splits(fixed4_onnx):
    _, images, labels = _accuracy_data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=5)  # batches of 5, 5, 2
    with OrtRunner(fixed4_onnx, threads=1) as ort_runner:
        assert ort_runner.fixed_batch == 4
        runner = Recording(ort_runner)
        acc = evaluate(runner, loader)
        # 5 -> 4 + 1 (padded), 5 -> 4 + 1 (padded), 2 -> 2 (padded): every call had exactly 4 images.
        assert runner.sizes == [4] * 5
        first7 = evaluate(ort_runner, loader, limit=7)
    assert (acc.samples, acc.top1, acc.top5) == (12, pytest.approx(100 * 4 / 12), pytest.approx(100 * 9 / 12))
    # Ranks of the first 7 labels: 0, 0, 1, 4, 5, 6, 2 -> top-1 2/7, top-5 5/7.
    assert (first7.samples, first7.top1, first7.top5) == (7, pytest.approx(200 / 7), pytest.approx(500 / 7))


def test_infer_batches_matches_one_big_batch(fixed4_onnx):
    model, images, _ = _accuracy_data()
    x = images[:7].numpy()
    with OrtRunner(fixed4_onnx) as fixed, TorchRunner(model) as free:
        padded = infer_batches(fixed, x)
        whole = infer_batches(free, x)
    assert padded.shape == (7, K)
    np.testing.assert_array_equal(padded, whole)  # integer-valued logits: exact on both backends


# Logits of four samples over 6 classes; the data set only has classes 1, 3 and 4.
SUBSET_LOGITS = np.array([
    [9, 5, 0, 1, 2, 0],  # label 1: class 0 wins overall; among 1/3/4, class 1 wins
    [0, 1, 9, 3, 2, 0],  # label 3: class 2 wins overall; among 1/3/4, class 3 wins
    [0, 1, 0, 3, 7, 9],  # label 3: class 5 wins overall; among 1/3/4, class 4 wins (3 second)
    [0, 8, 0, 3, 2, 0],  # label 4: class 1 wins; 4 is third of three
], np.float32)
SUBSET_LABELS = torch.tensor([1, 3, 3, 4])


def subset_runner():
    weight = np.zeros((6, 12), np.float32)
    weight[:, :4] = SUBSET_LOGITS.T
    return TorchRunner(linear_model(weight))


def test_evaluate_restricted_to_the_data_sets_classes():
    batches = [(one_hot_images(4), SUBSET_LABELS)]
    with subset_runner() as runner:
        everything = evaluate(runner, batches)
        subset = evaluate(runner, batches, classes=[1, 3, 4], expected_classes=6)
    assert (everything.top1, everything.top5) == (0.0, 100.0)
    # Restricted: samples 0 and 1 are right; top-5 is clipped to the 3 competing classes, so all hit.
    assert (subset.top1, subset.top5, subset.samples) == (50.0, 100.0, 4)


def test_evaluate_class_subset_ties_go_to_the_earlier_entry():
    weight = np.zeros((6, 12), np.float32)
    weight[[1, 3], 0] = 5.0  # classes 1 and 3 tie for sample 0
    batch = [(one_hot_images(1), torch.tensor([3]))]
    with TorchRunner(linear_model(weight)) as runner:
        assert evaluate(runner, batch, classes=[3, 1]).top1 == 100.0
        assert evaluate(runner, batch, classes=[1, 3]).top1 == 0.0


def test_evaluate_rejects_bad_class_subsets():
    batches = [(one_hot_images(4), SUBSET_LABELS)]
    with subset_runner() as runner:
        with pytest.raises(UsageError, match="label 4 is not among the 2 classes"):
            evaluate(runner, batches, classes=[1, 3])
        with pytest.raises(UsageError, match="class index 6 .* outside the model's 6 classes"):
            evaluate(runner, batches, classes=[1, 3, 6])
        with pytest.raises(UsageError, match="more than once"):
            evaluate(runner, batches, classes=[1, 3, 3])
        with pytest.raises(UsageError, match="non-empty"):
            evaluate(runner, batches, classes=[])


def test_evaluate_names_both_class_counts_when_they_differ():
    batches = [(one_hot_images(4), SUBSET_LABELS)]
    with subset_runner() as runner:
        with pytest.raises(UsageError) as info:
            evaluate(runner, batches, expected_classes=10)
    assert "6 logits" in str(info.value) and "10 classes" in str(info.value) and info.value.exit_code == 2


def test_evaluate_rejects_empty_loader_and_foreign_labels():
    model, images, labels = _accuracy_data()
    with TorchRunner(model) as runner:
        with pytest.raises(UsageError, match="no samples"):
            evaluate(runner, [])
        with pytest.raises(UsageError, match="outside"):
            evaluate(runner, [(images, labels + K)])
        with pytest.raises(UsageError, match="limit"):
            evaluate(runner, [(images, labels)], limit=0)
