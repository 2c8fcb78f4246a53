"""CIFAR-10/100 from the python-pickle release, with format checks instead of md5 sums and a safe unpickler."""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import UsageError
from ._spec import CIFAR_STATS, DEFAULT_CIFAR_ROOT, DataBundle, DataInfo, DataSpec, compose


class _Release(NamedTuple):
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    names_key: str  # the meta file's key of the class names
    num_classes: int


_RELEASES = {
    "cifar10": _Release("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                        "batches.meta", "label_names", 10),
    "cifar100": _Release("cifar-100-python", ("train",), ("test",), "meta", "fine_label_names", 100),
}  # fmt: skip


def check_files(kind: str, root: Path) -> Path:
    """The folder of ``kind`` under ``root``, after checking that every file of the release is there.

    Raises:
        UsageError: a file is missing (the message names it and suggests ``--download``).
    """
    release = _RELEASES[kind]
    folder = root / release.folder
    for file in [*release.train, *release.test, release.meta]:
        if not (folder / file).is_file():
            raise UsageError(
                f"{kind}: {folder / file} not found; pass --download to fetch it or point "
                f"--data {kind}:DIR at the folder that holds {release.folder}"
            )
    return folder


def info(kind: str, root: Path, download: bool) -> DataInfo:
    """`DataInfo` of ``kind``; checks the files are present unless ``download`` will fetch them."""
    if not download:
        check_files(kind, root)
    return DataInfo(kind, _RELEASES[kind].num_classes, (3, 32, 32))


# Globals a CIFAR batch may reference: numpy arrays (numpy 1 and 2 paths) and protocol-2 bytes.
_PICKLE_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name)
    for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and builtins, so a planted batch file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        """Return the global ``module.name`` if a CIFAR batch legitimately needs it, else refuse."""
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}; a CIFAR batch holds only arrays")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict[str, Any]:
    # The published files are Python 2 pickles whose keys load as str under latin1; files written from
    # Python 3 have bytes keys (b"data", as the CIFAR page's reader shows them): accept both.
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as err:
        raise UsageError(f"{path} is not a CIFAR python batch: {err}") from err
    if not isinstance(obj, dict):
        raise UsageError(f"{path} is not a CIFAR python batch: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


class _CifarFiles:
    """Mixed in before torchvision's CIFAR10/CIFAR100 (`_cifar_class`): file checks instead of md5 sums.

    torchvision hashes every file on each construction (about a second for the real 180 MB) and accepts only
    the exact published files, so no smaller correctly formatted folder (tests, subsets) could load. Here the
    presence and format of each file is checked instead: a dict with ``data`` uint8 ``(N, 3072)`` (R, G, B
    planes of 32x32, row-major) and ``labels`` / ``fine_labels`` of N ints below the class count, and a meta
    file naming every class. A download still goes through torchvision, which verifies the archive's md5.
    ``__getitem__`` is torchvision's.
    """

    kind = ""
    num_classes = 0

    def __init__(self, root: Path, *, train: bool, transform: Callable | None = None, download: bool = False):
        import numpy as np
        from torchvision.datasets import VisionDataset

        VisionDataset.__init__(self, root, transform=transform)  # type: ignore[arg-type]
        self.train = train
        if download:
            self.download()  # type: ignore[attr-defined]
        folder = check_files(self.kind, Path(self.root))
        release = _RELEASES[self.kind]
        data, self.targets = [], []
        for name in release.train if train else release.test:
            batch = _read_batch(folder / name)
            x, y = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
            ok = isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072
            if not ok or y is None or len(y) != len(x) or not all(0 <= int(v) < self.num_classes for v in y):
                raise UsageError(
                    f"{folder / name} is not a {self.kind} batch: expected 'data' uint8 (N, 3072) and N labels "
                    f"in [0, {self.num_classes})"
                )
            data.append(x)
            self.targets += [int(v) for v in y]
        self.data = np.ascontiguousarray(np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        names = _read_batch(folder / release.meta).get(release.names_key)
        if not isinstance(names, (list, tuple)) or len(names) != self.num_classes:
            raise UsageError(f"{folder / release.meta} is not a {self.kind} meta file: expected "
                             f"{release.names_key!r} with {self.num_classes} class names")  # fmt: skip
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __reduce__(self) -> tuple[Any, ...]:
        # The class is built at run time; rebuild it by kind so spawned DataLoader workers can unpickle.
        return _rebuild_cifar, (self.kind, self.__dict__)


@functools.cache
def _cifar_class(kind: str) -> type:
    """`_CifarFiles` on top of torchvision's class for ``kind``; built lazily to keep the package import cheap."""
    from torchvision import datasets

    base = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    attrs = {"kind": kind, "num_classes": _RELEASES[kind].num_classes, "__module__": __name__}
    return type(f"Checked{base.__name__}", (_CifarFiles, base), attrs)


def _rebuild_cifar(kind: str, state: dict[str, Any]) -> Any:
    obj = _cifar_class(kind).__new__(_cifar_class(kind))
    obj.__dict__.update(state)
    return obj


def load_cifar(spec: DataSpec, download: bool, augment: bool) -> DataBundle:
    """The CIFAR bundle of ``spec`` (train: RandomCrop(32, padding=4) + flip when ``augment``).

    Raises:
        UsageError: missing or malformed files, or a failed download.
    """
    from torchvision import transforms as T

    from ..zoo import _download_timeout

    cls, root = _cifar_class(spec.kind), Path(spec.root or DEFAULT_CIFAR_ROOT)
    mean, std = CIFAR_STATS[spec.kind]
    aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    try:  # offline, a download fails with URLError, OSError, a bad checksum...: make it one line, exit 2
        with _download_timeout() if download else contextlib.nullcontext():
            train = cls(root, train=True, transform=compose(aug, mean, std), download=download)
    except Exception as err:
        if isinstance(err, UsageError) or not download:
            raise
        raise UsageError(f"{spec.kind}: cannot download into {root}: {err}") from err
    test = cls(root, train=False, transform=compose([], mean, std))
    return DataBundle(spec.kind, train, test, cls.num_classes, (3, 32, 32), mean, std)  # type: ignore[attr-defined]
