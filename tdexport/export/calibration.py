"""Calibration images for int8 quantization: batches from a ``--data`` spec and ONNX Runtime's reader over them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ..errors import UsageError

__all__ = ["CalibrationReader", "calibration_batches"]


class CalibrationReader:
    """ONNX Runtime `CalibrationDataReader` over float32 image batches (N, C, H, W), with a tqdm bar.

    Batches are checked against the model input (C, H, W); a model with a fixed batch size F gets the images
    regrouped into batches of exactly F (a short last group is filled by repeating its own images, which
    leaves every calibrated min / max unchanged).
    """

    def __init__(self, batches: Iterable[np.ndarray], input_name: str, chw: tuple[int, ...],
                 fixed_batch: int | None, progress: bool | None) -> None:
        from tqdm import tqdm

        self._source = iter(batches)
        self._name, self._chw, self._fixed = input_name, chw, fixed_batch
        self._pending: list[np.ndarray] = []
        self.images = 0
        total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        self._bar = tqdm(total=total, desc="int8 calibration", unit="batch", leave=False,
                         disable=None if progress is None else not progress)

    def _next_batch(self) -> np.ndarray | None:
        raw = next(self._source, None)
        if raw is None:
            return None
        batch = np.ascontiguousarray(np.asarray(raw, dtype=np.float32))
        if batch.ndim != 4 or batch.shape[0] < 1 or tuple(batch.shape[1:]) != self._chw:
            raise UsageError(f"calibration batch has shape {tuple(batch.shape)}, expected (N, *{self._chw})")
        if not np.isfinite(batch).all():
            raise UsageError("calibration batch holds NaN or infinite values")
        self._bar.update(1)
        self.images += batch.shape[0]
        return batch

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next ``{input name: batch}``, or None after the last one (ONNX Runtime's protocol)."""
        if self._fixed is None:
            batch = self._next_batch()
            return None if batch is None else {self._name: batch}
        while sum(len(p) for p in self._pending) < self._fixed:
            batch = self._next_batch()
            if batch is None:
                break
            self._pending.append(batch)
        if not self._pending:
            return None
        images = np.concatenate(self._pending)
        group, rest = images[: self._fixed], images[self._fixed :]
        self._pending = [rest] if len(rest) else []
        if len(group) < self._fixed:
            group = np.resize(group, (self._fixed, *self._chw))  # cycles through the group's own images
        return {self._name: np.ascontiguousarray(group)}

    def close(self) -> None:
        """Close the progress bar."""
        self._bar.close()


class _Batches(Iterator[np.ndarray]):
    """Iterator of float32 batches with a known length (so progress bars can show a total)."""

    def __init__(self, batches: Iterator[np.ndarray], count: int) -> None:
        self._batches, self._count = batches, count

    def __iter__(self) -> _Batches:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._batches)

    def __len__(self) -> int:
        return self._count


def calibration_batches(
    spec: str,
    size: int,
    *,
    input_shape: Sequence[int],
    batch: int = 32,
    seed: int | None = 0,
    split: str = "train",
) -> Iterator[np.ndarray]:
    """``size`` images of a ``--data`` spec as float32 batches (n, C, H, W), for int8 calibration.

    The images are those the validator would see: `tdexport.data.load_data` with the evaluation transforms
    (no augmentation) and the dataset's own normalisation, so the calibrated ranges match deployment.

    Args:
        spec: a data spec (``digits``, ``cifar10:DIR``, ``imagenet:DIR``, ``folder:DIR``; see
            `tdexport.data.DATA_FORMS`).
        size: number of images, at least 1 and at most the split's length.
        input_shape: the model's (C, H, W); the data must match it.
        batch: images per batch (the last one may be shorter).
        seed: a seeded random sample of the split (without replacement); None takes its first ``size`` images.
        split: ``train`` (default; calibrating on the split accuracy is measured on would flatter it) or ``test``.

    Returns:
        An iterator of ``ceil(size / batch)`` arrays (``len()`` works on it); images are loaded lazily.

    Raises:
        UsageError: ``size`` or ``batch`` below 1, ``size`` above the split's length, an unknown or malformed
            spec, missing files, a split name other than train/test, or a data shape other than ``input_shape``.
    """
    from ..data import describe_data, load_data, make_loader

    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UsageError(f"calibration size must be an integer of at least 1, got {size!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise UsageError(f"calibration batch must be an integer of at least 1, got {batch!r}")
    if split not in ("train", "test"):
        raise UsageError(f"calibration split must be 'train' or 'test', got {split!r}")
    shape = tuple(int(d) for d in input_shape)
    info = describe_data(spec)  # malformed specs and missing files fail here, before any image is read
    if tuple(info.input_shape) != shape:
        raise UsageError(f"--data {spec} gives images of shape {tuple(info.input_shape)}, but the model "
                         f"takes {shape}")
    dataset = getattr(load_data(spec, augment=False), split)
    if size > len(dataset):
        raise UsageError(f"calibration size {size} is more than the {len(dataset)} images of the {split} split "
                         f"of --data {spec}")
    if seed is None:
        indices = list(range(size))
    else:
        indices = np.random.default_rng(seed).choice(len(dataset), size=size, replace=False).tolist()

    import torch.utils.data

    loader = make_loader(torch.utils.data.Subset(dataset, indices), batch_size=batch, train=False)

    def generate() -> Iterator[np.ndarray]:
        for images, _ in loader:
            yield np.ascontiguousarray(images.numpy(), dtype=np.float32)

    return _Batches(generate(), math.ceil(size / batch))
