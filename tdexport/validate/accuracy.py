"""Top-1 / top-5 accuracy of a runner over a labelled data loader.

The runner is duck-typed (see `tdexport.runtime`): ``infer(np.ndarray (N, C, H, W) float32) -> (N, K)``
logits, and optionally ``fixed_batch: int | None`` when its graph or engine only accepts one batch size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["Accuracy", "evaluate", "topk_hits"]


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


def _infer(runner: Any, images: np.ndarray, fixed: int | None) -> np.ndarray:
    """Logits (N, K) for a batch, splitting and zero-padding it to the runner's fixed batch size if any."""
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


def evaluate(runner: Any, loader: Iterable[tuple[Any, Any]], *, limit: int | None = None,
             progress: bool = False) -> Accuracy:
    """Measure top-1 and top-5 accuracy of a loaded runner.

    Args:
        runner: loaded runner; ``infer(np.ndarray (N, C, H, W) float32) -> np.ndarray (N, K)`` logits. If it
            has ``fixed_batch`` (an int), every call gets exactly that many images: a short last batch is
            zero-padded and the padding's predictions are dropped, a larger batch is split.
        loader: iterable of ``(images, labels)``: images a float tensor/array of shape (N, C, H, W), labels
            integer class indices of shape (N,). Torch tensors are moved to the CPU and converted to numpy.
        limit: evaluate at most this many samples (the last batch is truncated); None for all.
        progress: show a tqdm progress bar (batches) on stderr.

    Returns:
        `Accuracy` with top-1 and top-min(5, K) in percent and the sample count.

    Raises:
        UsageError: no samples, ``limit`` < 1, or a label outside the model's K classes.
        ValueError: the runner returned logits that are not of shape (N, K).
    """
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be at least 1, got {limit}")
    fixed = getattr(runner, "fixed_batch", None)
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
            logits = _infer(runner, x, fixed)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"runner {getattr(runner, 'name', runner)!r} returned logits of shape "
                                 f"{tuple(logits.shape)} for {x.shape[0]} images; expected (N, K)")
            classes = logits.shape[1]
            if y.shape[0] != x.shape[0]:
                raise UsageError(f"a batch has {x.shape[0]} images but {y.shape[0]} labels")
            if y.min() < 0 or y.max() >= classes:
                raise UsageError(f"label {int(y.max() if y.max() >= classes else y.min())} is outside the "
                                 f"model's {classes} classes; does the data set match the model?")
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
