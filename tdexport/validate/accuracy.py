"""Top-1 / top-5 accuracy of a runner over a labelled data loader.

The runner is duck-typed (see `tdexport.runtime`): ``infer(np.ndarray (N, C, H, W) float32) -> (N, K)``
logits, and optionally ``fixed_batch: int | None`` when its graph or engine only accepts one batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["Accuracy", "evaluate", "infer_batches", "topk_hits"]


@dataclass(frozen=True)
class Accuracy:
    """Classification accuracy over a data set.

    Attributes:
        top1: percent of samples whose highest logit is the label (0–100).
        top5: percent of samples whose label is among the min(5, K) highest logits (0–100).
        samples: number of samples evaluated.
    """

    top1: float
    top5: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"top1": %, "top5": %, "samples": n}``."""
        return {"top1": self.top1, "top5": self.top5, "samples": self.samples}


def _as_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array, without copying when avoidable."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> tuple[int, int]:
    """Count top-1 and top-k hits.

    Ties between logits are broken towards the lower class index, as ``argmax`` does, so top-1 hits are
    always a subset of top-k hits.

    Args:
        logits: scores, shape (N, K).
        labels: integer class indices, shape (N,), each in [0, K).
        k: how many of the highest scores count for the second number (clipped to K).

    Returns:
        (top-1 hits, top-k hits), each between 0 and N.
    """
    k = max(1, min(k, logits.shape[1]))
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hits = order == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(axis=1).sum())


def infer_batches(runner: Any, images: np.ndarray) -> np.ndarray:
    """Logits of a batch of any size, fitted to a runner that only accepts one batch size.

    Args:
        runner: loaded runner; ``infer(np.ndarray (n, C, H, W) float32) -> (n, K)``. When its ``fixed_batch``
            is an int F, every call gets exactly F images: the batch is split into chunks of F and a short
            last chunk is zero-padded; the padding's logits are dropped.
        images: float32 images, shape (N, C, H, W), N ≥ 1.

    Returns:
        Logits, shape (N, K), in the order of ``images``.
    """
    fixed = getattr(runner, "fixed_batch", None)
    n = images.shape[0]
    if not fixed or n == fixed:
        return np.asarray(runner.infer(images))
    parts = []
    for begin in range(0, n, fixed):
        chunk = images[begin:begin + fixed]
        size = chunk.shape[0]
        if size < fixed:
            pad = np.zeros((fixed - size, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        parts.append(np.asarray(runner.infer(chunk))[:size])
    return np.concatenate(parts)


def _class_subset(classes: Sequence[int] | None, expected: int | None) -> np.ndarray | None:
    """``classes`` as an int64 array after checking it is non-empty, unique and non-negative (None stays)."""
    if classes is None:
        return None
    subset = np.asarray(list(classes))
    if subset.ndim != 1 or subset.size == 0 or not np.issubdtype(subset.dtype, np.integer):
        raise UsageError(f"classes must be a non-empty sequence of class indices, got {list(classes)[:10]}")
    if len(np.unique(subset)) != subset.size:
        raise UsageError("classes lists a class index more than once")
    if subset.min() < 0 or (expected is not None and subset.max() >= expected):
        bad = int(subset.min() if subset.min() < 0 else subset.max())
        raise UsageError(f"class index {bad} in classes is outside the model's "
                         f"{expected if expected is not None else 'output'} classes")
    return subset.astype(np.int64)


def evaluate(runner: Any, loader: Iterable[tuple[Any, Any]], *, limit: int | None = None,
             progress: bool = False, classes: Sequence[int] | None = None,
             expected_classes: int | None = None) -> Accuracy:
    """Measure top-1 and top-5 accuracy of a loaded runner.

    Args:
        runner: loaded runner; ``infer(np.ndarray (N, C, H, W) float32) -> np.ndarray (N, K)`` logits. If it
            has ``fixed_batch`` (an int), every call gets exactly that many images (see `infer_batches`).
        loader: iterable of ``(images, labels)``: images a float tensor/array of shape (N, C, H, W), labels
            integer class indices of shape (N,) in the model's label space. Torch tensors are moved to the
            CPU and converted to numpy.
        limit: evaluate at most this many samples (the last batch is truncated); None for all.
        progress: show a tqdm progress bar (batches) on stderr.
        classes: the model-output indices the data set's samples can belong to, when the data set covers
            only part of the model's label space (e.g. a 100-class subset of ImageNet with canonical ImageNet
            labels). Only these logit columns compete for top-1/top-5; the others can never be predicted.
            Labels stay model indices and must be among ``classes``. Ties go to the earlier entry of
            ``classes``. None: all K classes compete.
        expected_classes: the number of logits per image the caller expects (the data set's label space);
            a runner returning another width is a usage error. None: not checked.

    Returns:
        `Accuracy` with top-1 and top-min(5, number of competing classes) in percent and the sample count.

    Raises:
        UsageError: no samples, ``limit`` < 1, logits whose width K differs from ``expected_classes``, a bad
            ``classes`` (empty, repeated, negative or ≥ K), or a label outside the K classes or not among
            ``classes``.
        ValueError: the runner returned logits that are not of shape (N, K).
    """
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be at least 1, got {limit}")
    if expected_classes is not None and expected_classes < 1:
        raise UsageError(f"expected_classes must be at least 1, got {expected_classes}")
    subset = _class_subset(classes, expected_classes)
    position: np.ndarray | None = None  # model class index -> column in the restricted logits, or -1
    name = getattr(runner, "name", runner)
    batches: Iterable[tuple[Any, Any]] = loader
    bar = None
    if progress:
        from tqdm import tqdm

        total = len(loader) if hasattr(loader, "__len__") else None
        bar = tqdm(loader, total=total, desc=f"accuracy {getattr(runner, 'name', '')}".rstrip(), unit="batch")
        batches = bar
    seen = top1 = top5 = 0
    try:
        for images, labels in batches:
            x = np.ascontiguousarray(_as_numpy(images), dtype=np.float32)
            y = _as_numpy(labels).astype(np.int64).reshape(-1)
            if limit is not None:
                x, y = x[:limit - seen], y[:limit - seen]
            if x.shape[0] == 0:
                break
            logits = infer_batches(runner, x)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"runner {name!r} returned logits of shape {tuple(logits.shape)} for "
                                 f"{x.shape[0]} images; expected (N, K)")
            width = logits.shape[1]
            if expected_classes is not None and width != expected_classes:
                raise UsageError(f"runner {name!r} returns {width} logits per image but the data set has "
                                 f"{expected_classes} classes; does the data set match the model?")
            if y.shape[0] != x.shape[0]:
                raise UsageError(f"a batch has {x.shape[0]} images but {y.shape[0]} labels")
            if y.min() < 0 or y.max() >= width:
                raise UsageError(f"label {int(y.max() if y.max() >= width else y.min())} is outside the "
                                 f"model's {width} classes; does the data set match the model?")
            if subset is not None:
                if position is None:
                    if subset.max() >= width:
                        raise UsageError(f"class index {int(subset.max())} in classes is outside the model's "
                                         f"{width} classes")
                    position = np.full(width, -1, dtype=np.int64)
                    position[subset] = np.arange(subset.size)
                columns = position[y]
                if columns.min() < 0:
                    raise UsageError(f"label {int(y[np.argmin(columns)])} is not among the {subset.size} classes "
                                     f"evaluated")
                logits, y = logits[:, subset], columns
            h1, h5 = topk_hits(logits, y, 5)
            top1 += h1
            top5 += h5
            seen += x.shape[0]
            if limit is not None and seen >= limit:
                break
    finally:
        if bar is not None:
            bar.close()
    if seen == 0:
        raise UsageError("the data loader yielded no samples to evaluate")
    return Accuracy(top1=100.0 * top1 / seen, top5=100.0 * top5 / seen, samples=seen)
