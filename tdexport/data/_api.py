"""`load_data` and `describe_data`: a spec to its datasets, or to what it is without reading images."""

from __future__ import annotations

from pathlib import Path

from . import _cifar, _digits, _folders
from ._spec import CIFAR_STATS, DEFAULT_CIFAR_ROOT, DataBundle, DataInfo, DataSpec, as_spec


def describe_data(spec: DataSpec | str, *, download: bool = False) -> DataInfo:
    """What ``spec`` holds (class count, label space, input shape), without loading or decoding its images.

    Meant to check a dataset against a model before any costly work. It reads directory listings, label
    files and the header of one image (folders), or checks file presence (CIFAR); digits and CIFAR import
    neither torch nor torchvision. Every layout error `load_data` would raise for ImageNet and folders is
    raised here too; corrupt CIFAR batches are only found by `load_data`.

    Args:
        spec: a `DataSpec` or its text.
        download: CIFAR files will be downloaded, so their absence is no error.

    Returns:
        The `DataInfo`, equal to ``load_data(spec).info``.

    Raises:
        UsageError: malformed spec, missing or malformed files (the message names the path and what was expected).
    """
    spec = as_spec(spec)
    if spec.kind == "digits":
        return _digits.INFO
    if spec.kind in CIFAR_STATS:
        return _cifar.info(spec.kind, Path(spec.root or DEFAULT_CIFAR_ROOT), download)
    return _folders.scan(spec.kind, Path(spec.root)).info  # type: ignore[arg-type]


def load_data(spec: DataSpec | str, *, download: bool = False, augment: bool = True) -> DataBundle:
    """Build the datasets of ``spec``.

    Args:
        spec: a `DataSpec` or its text.
        download: fetch CIFAR into its DIR when files are missing (torchvision verifies the archive's md5);
            ignored for the other kinds (digits are bundled, ImageNet and folders are local).
        augment: use the training transforms on ``train``; ``False`` gives it the evaluation transforms.

    Raises:
        UsageError: malformed spec, missing or malformed files (the message names the path and what was expected).
    """
    spec = as_spec(spec)
    if spec.kind == "digits":
        return _digits.load_digits(augment)
    if spec.kind in CIFAR_STATS:
        return _cifar.load_cifar(spec, download, augment)
    return _folders.load(_folders.scan(spec.kind, Path(spec.root)), augment)  # type: ignore[arg-type]
