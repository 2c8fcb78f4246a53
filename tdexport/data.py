"""Dataset specs (``--data SPEC``) to train/test datasets with their transforms, and seeded data loaders.

Every item is ``(normalised image float32 (3, H, W), int label)``. Spec forms (`DATA_FORMS`):

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes, offline), bilinearly resized to
  32x32 once, grey replicated to 3 channels, /16 into [0, 1], normalised by the training split's per-channel
  mean/std. Split: stratified 80/20, ``random_state=0`` (1437 train / 360 test). Training augmentation: random
  translation by up to 2 px (pad 2 with background, crop 32); no flips, digits are not mirror-symmetric.
- ``cifar10[:DIR]``, ``cifar100[:DIR]``: the python-pickle CIFAR release; DIR (default ``./data``, relative to
  the working directory) holds ``cifar-10-batches-py/`` or ``cifar-100-python/``. Train: RandomCrop(32,
  padding=4) + horizontal flip. Normalised by the training set's per-channel pixel mean/std (`CIFAR_STATS`).
- ``imagenet:DIR``: ``DIR/train/<wnid>/*.JPEG``; validation either ``DIR/val/<wnid>/*.JPEG`` or flat
  ``DIR/val/*.JPEG`` labelled by ``DIR/val_labels.txt`` (lines ``<filename> <wnid>``) or, when that is absent,
  the Kaggle devkit's ``DIR/LOC_val_solution.csv`` (``ImageId,PredictionString``, first token the wnid).
  Class index = sorted wnids of ``train/``, else of the validation labels (validation-only folders work; the
  train split is then empty). Train: RandomResizedCrop(224) + flip; eval: Resize(256) + CenterCrop(224).
- ``folder:DIR``: ``DIR/train/<class>/...`` with ``DIR/val/<class>/...`` (or ``DIR/test/``), or class folders
  directly in DIR, split per class 80/20 (sorted paths shuffled with seed 0, ``round(n/5)`` held out). First
  training image larger than 64 px on a side: ImageNet's 224 transforms; else every image is resized to that
  first image's size (train adds RandomCrop with 1/8 padding + flip). ImageNet and folders use ImageNet mean/std.

Importing this module is cheap (torch, torchvision, PIL and scikit-learn load on first use), so the CLI can
show `DATA_FORMS` in its help without paying for them.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["DATA_FORMS", "DataSpec", "DataBundle", "parse_data_spec", "load_data", "make_loader", "set_loader_epoch"]

DATA_FORMS = "digits, cifar10[:DIR], cifar100[:DIR], imagenet:DIR, folder:DIR"
DEFAULT_CIFAR_ROOT = Path("data")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Per-channel mean and (population) std of the training pixels, in [0, 1] units.
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
_Stats = tuple[float, float, float]
_LAYOUTS = {
    "imagenet": "DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG, or flat DIR/val/*.JPEG with DIR/val_labels.txt "
    "('<filename> <wnid>' lines) or DIR/LOC_val_solution.csv",
    "folder": "DIR/train/<class>/* with DIR/val/<class>/* (or DIR/test/), or class folders DIR/<class>/*",
}


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` spec.

    Attributes:
        kind: ``"digits"``, ``"cifar10"``, ``"cifar100"``, ``"imagenet"`` or ``"folder"``.
        root: dataset directory; ``None`` for digits, `DEFAULT_CIFAR_ROOT` (``./data``) for a bare CIFAR kind.
        text: the spec as given.
    """

    kind: str
    root: Path | None
    text: str


def parse_data_spec(text: str) -> DataSpec:
    """Parse one of `DATA_FORMS`, e.g. ``"cifar10:/data"``; the kind is case-insensitive.

    Raises:
        UsageError: malformed spec (the message lists the accepted forms).
    """
    kind, sep, rest = str(text).strip().partition(":")
    kind = kind.lower()
    if kind == "digits" and not sep:
        return DataSpec(kind, None, text)
    if kind in CIFAR_STATS and not (sep and not rest):
        return DataSpec(kind, Path(rest).expanduser() if sep else DEFAULT_CIFAR_ROOT, text)
    if kind in ("imagenet", "folder") and rest:
        return DataSpec(kind, Path(rest).expanduser(), text)
    raise UsageError(f"malformed --data {text!r}; expected one of: {DATA_FORMS}")


@dataclass
class DataBundle:
    """Train and test datasets of one spec, with what a model and its exporter need to know.

    Attributes:
        name: the spec's kind, e.g. ``"digits"``, ``"cifar10"``.
        train: map-style dataset of ``(image float32 (3, H, W), int label)``, training transforms (when augmenting).
        test: the test / validation split, evaluation transforms.
        num_classes: number of labels; labels are ``0 .. num_classes - 1``.
        input_shape: ``(3, H, W)`` of one image: ``(3, 32, 32)`` or ``(3, 224, 224)`` (folder: see module doc).
        mean: per-channel mean subtracted from [0, 1] pixels (an exporter folding normalisation needs it).
        std: per-channel std the centred pixels were divided by.
    """

    name: str
    train: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: _Stats
    std: _Stats


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
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "digits":
        return _digits(augment)
    if spec.kind in CIFAR_STATS:
        return _cifar(spec, download, augment)
    if spec.kind in ("imagenet", "folder") and spec.root is not None:
        return (_imagenet if spec.kind == "imagenet" else _folder)(Path(spec.root), augment)
    raise UsageError(f"malformed --data {spec.text!r}; expected one of: {DATA_FORMS}")


class _ImageTensors:
    """In-memory dataset of ``images (N, 3, H, W)`` and ``labels (N,)`` (as ``TensorDataset.tensors``).

    With ``padded`` (the images padded by ``s`` px on each side) every item is a random ``H x W`` crop of
    its padded image, i.e. a translation by up to ``s`` px: one slice per item, no PIL round trip. Offsets
    come from torch's global RNG (seeded per worker by the DataLoader), as torchvision's random transforms do.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, padded: torch.Tensor | None = None) -> None:
        self.tensors, self.padded = (images, labels), padded

    def __len__(self) -> int:
        return len(self.tensors[1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import torch

        image, label = self.tensors[0][i], int(self.tensors[1][i])
        if self.padded is None:
            return image, label
        (h, w), s2 = image.shape[-2:], self.padded.shape[-1] - image.shape[-1]
        dy, dx = torch.randint(0, s2 + 1, (2,)).tolist()
        return self.padded[i, :, dy : dy + h, dx : dx + w], label


def _digits(augment: bool) -> DataBundle:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    i_train, i_test = (
        torch.as_tensor(i)
        for i in train_test_split(list(range(len(y))), test_size=0.2, stratify=digits.target, random_state=0)
    )
    x_train = x[i_train]
    mean, std = x_train.mean(dim=(0, 2, 3)), x_train.std(dim=(0, 2, 3), correction=0)

    def norm(t: torch.Tensor) -> torch.Tensor:
        return ((t - mean[:, None, None]) / std[:, None, None]).contiguous()

    # Pad before normalising, so the border is background (0) like the digit's own surround.
    padded = norm(F.pad(x_train, (2, 2, 2, 2))) if augment else None
    train = _ImageTensors(norm(x_train), y[i_train], padded)
    test = _ImageTensors(norm(x[i_test]), y[i_test])
    stats = (tuple(mean.tolist()), tuple(std.tolist()))
    return DataBundle("digits", train, test, 10, (3, 32, 32), *stats)  # type: ignore[arg-type]


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
    planes of 32x32, row-major) and ``labels`` / ``fine_labels`` of N ints below the class count. A download
    still goes through torchvision, which verifies the archive's md5. ``__getitem__`` is torchvision's.
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
        folder = Path(self.root) / self.base_folder  # type: ignore[attr-defined]
        split = self.train_list if train else self.test_list  # type: ignore[attr-defined]
        for name in [n for n, _ in self.train_list + self.test_list] + [self.meta["filename"]]:  # type: ignore
            if not (folder / name).is_file():
                raise UsageError(
                    f"{self.kind}: {folder / name} not found; pass --download to fetch it or point "
                    f"--data {self.kind}:DIR at the folder that holds {folder.name}"
                )
        data, self.targets = [], []
        for name, _md5 in split:
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
        names = _read_batch(folder / self.meta["filename"]).get(self.meta["key"], [])  # type: ignore[attr-defined]
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __reduce__(self) -> tuple[Any, ...]:
        # The class is built at run time; rebuild it by kind so spawned DataLoader workers can unpickle.
        return _rebuild_cifar, (self.kind, self.__dict__)


@functools.cache
def _cifar_class(kind: str) -> type:
    """`_CifarFiles` on top of torchvision's class for ``kind``; built lazily to keep this module's import cheap."""
    from torchvision import datasets

    base = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    attrs = {"kind": kind, "num_classes": 10 if kind == "cifar10" else 100, "__module__": __name__}
    return type(f"Checked{base.__name__}", (_CifarFiles, base), attrs)


def _rebuild_cifar(kind: str, state: dict[str, Any]) -> Any:
    obj = _cifar_class(kind).__new__(_cifar_class(kind))
    obj.__dict__.update(state)
    return obj


def _compose(augmentation: list[Any], mean: _Stats, std: _Stats) -> Any:
    from torchvision import transforms as T

    return T.Compose([*augmentation, T.ToTensor(), T.Normalize(mean, std)])


def _cifar(spec: DataSpec, download: bool, augment: bool) -> DataBundle:
    from torchvision import transforms as T

    from .zoo import _download_timeout

    cls, root = _cifar_class(spec.kind), Path(spec.root or DEFAULT_CIFAR_ROOT)
    mean, std = CIFAR_STATS[spec.kind]
    aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    try:  # offline, a download fails with URLError, OSError, a bad checksum...: make it one line, exit 2
        with _download_timeout() if download else contextlib.nullcontext():
            train = cls(root, train=True, transform=_compose(aug, mean, std), download=download)
    except Exception as err:
        if isinstance(err, UsageError) or not download:
            raise
        raise UsageError(f"{spec.kind}: cannot download into {root}: {err}") from err
    test = cls(root, train=False, transform=_compose([], mean, std))
    return DataBundle(spec.kind, train, test, cls.num_classes, (3, 32, 32), mean, std)  # type: ignore[attr-defined]


class _ImageFiles:
    """Map-style dataset of image files: item ``i`` is ``(transform(RGB PIL image), class index)``."""

    def __init__(self, samples: Sequence[tuple[Path, int]], classes: list[str], transform: Callable) -> None:
        self.samples, self.classes, self.transform = list(samples), classes, transform
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), label


def _images(d: Path) -> list[Path]:  # recursive, as ImageFolder
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())


def _class_images(d: Path) -> list[tuple[Path, str]]:  # (path, class) under d/<class>/, sorted
    classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [(p, c) for c in classes for p in _images(d / c)]


def _flat_val_labels(root: Path, val: Path) -> list[tuple[Path, str]]:
    txt, csv = root / "val_labels.txt", root / "LOC_val_solution.csv"
    if not (txt.is_file() or csv.is_file()):
        raise UsageError(f"imagenet: {val} holds images but no class folders; expected {txt} or {csv}")
    labels, path = {}, txt if txt.is_file() else csv
    for n, line in enumerate(path.read_text().splitlines()[(0 if path is txt else 1) :], 1):
        fields = line.replace(",", " ").split()
        if fields:
            if len(fields) < 2:
                raise UsageError(f"{path}:{n}: expected '<filename> <wnid>', got {line!r}")
            labels[Path(fields[0]).stem] = fields[1]
    missing = [p for p in _images(val) if p.stem not in labels]
    if missing:
        raise UsageError(f"imagenet: {path} has no label for {missing[0]} ({len(missing)} unlabelled images)")
    return [(p, labels[p.stem]) for p in _images(val)]


def _image_bundle(name: str, train: list[tuple[Path, str]], val: list[tuple[Path, str]], augment: bool, where: Path):
    from PIL import Image
    from torchvision import transforms as T

    classes = sorted({c for _, c in train or val})
    if not val:
        what = "validation" if classes else "labelled"
        raise UsageError(f"{name}: no {what} images found under {where}; expected {_LAYOUTS[name]}")
    unknown = sorted({c for _, c in val} - set(classes))
    if unknown:
        raise UsageError(f"{name}: validation class {unknown[0]!r} under {where} has no training folder")
    first = (train or val)[0][0]
    try:
        with Image.open(first) as im:
            w, h = im.size
    except Exception as err:
        raise UsageError(f"{name}: cannot read image {first}: {err}") from err
    if name == "imagenet" or max(h, w) > 64:
        shape, aug = (3, 224, 224), [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
        eval_tf = _compose([T.Resize(256), T.CenterCrop(224)], IMAGENET_MEAN, IMAGENET_STD)
    else:
        shape, aug = (3, h, w), [T.Resize((h, w)), T.RandomCrop((h, w), padding=max(1, min(h, w) // 8))]
        aug.append(T.RandomHorizontalFlip())
        eval_tf = _compose([T.Resize((h, w))], IMAGENET_MEAN, IMAGENET_STD)
    train_tf = _compose(aug, IMAGENET_MEAN, IMAGENET_STD) if augment else eval_tf
    index = {c: i for i, c in enumerate(classes)}
    ds_train = _ImageFiles([(p, index[c]) for p, c in train], classes, train_tf)
    ds_val = _ImageFiles([(p, index[c]) for p, c in val], classes, eval_tf)
    return DataBundle(name, ds_train, ds_val, len(classes), shape, IMAGENET_MEAN, IMAGENET_STD)


def _imagenet(root: Path, augment: bool) -> DataBundle:
    if not root.is_dir():
        raise UsageError(f"imagenet: {root} is not a directory; expected {_LAYOUTS['imagenet']}")
    train_dir, val_dir = root / "train", root / "val"
    train = _class_images(train_dir) if train_dir.is_dir() else []
    val: list[tuple[Path, str]] = []
    if val_dir.is_dir():
        val = _class_images(val_dir) or (_flat_val_labels(root, val_dir) if _images(val_dir) else [])
    return _image_bundle("imagenet", train, val, augment, root)


def _folder(root: Path, augment: bool) -> DataBundle:
    if not root.is_dir():
        raise UsageError(f"folder: {root} is not a directory; expected {_LAYOUTS['folder']}")
    if (root / "train").is_dir():
        second = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
        if second is None:
            raise UsageError(f"folder: {root / 'train'} has no sibling {root / 'val'} or {root / 'test'}")
        return _image_bundle("folder", _class_images(root / "train"), _class_images(second), augment, root)
    import torch

    by_class: dict[str, list[tuple[Path, str]]] = {}
    for item in _class_images(root):
        by_class.setdefault(item[1], []).append(item)
    g, train, val = torch.Generator().manual_seed(0), [], []
    for items in by_class.values():  # insertion order = sorted class names, so the split is deterministic
        order, k = torch.randperm(len(items), generator=g).tolist(), round(len(items) / 5)
        val += [items[i] for i in order[:k]]
        train += [items[i] for i in order[k:]]
    return _image_bundle("folder", train, val, augment, root)


class _EpochShuffle:
    """Random order of ``range(n)`` that depends only on ``(seed, epoch)``, like DistributedSampler's.

    Seeding per epoch, rather than drawing from one running generator, lets a resumed run reproduce epoch
    k's order without replaying epochs ``0 .. k-1``. The epoch advances after each pass, so forgetting
    `set_loader_epoch` still gives a fresh order each epoch.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use ``epoch``'s order."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        import torch

        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return iter(torch.randperm(self.n, generator=g).tolist())


def make_loader(
    dataset: Any,
    *,
    batch_size: int,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool | None = None,
) -> torch.utils.data.DataLoader:
    """Wrap ``dataset`` in a DataLoader yielding ``(images (B, 3, H, W) float32, labels (B,) int64)``.

    Args:
        dataset: a map-style dataset such as `DataBundle.train`.
        batch_size: images per batch (per process when distributed).
        train: shuffle, in an order fixed by ``(seed, epoch)`` (see `set_loader_epoch`); else keep dataset order.
        workers: loader worker processes (persistent when > 0); 0 loads in the calling process.
        seed: seeds the shuffle and the workers' RNGs (random augmentation).
        distributed: shard with ``DistributedSampler(shuffle=train, seed=seed)``; needs an initialised process
            group. The caller must call `set_loader_epoch` every epoch, or each epoch repeats one order.
        drop_last: drop a final partial batch; default ``train``, since BatchNorm fails on a batch of one,
            unless that would leave no batch at all.

    Raises:
        UsageError: ``batch_size`` or ``workers`` out of range.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    if batch_size < 1 or workers < 0:
        raise UsageError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    sampler: Any = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed)
    elif train:
        sampler = _EpochShuffle(len(dataset), seed)
    if drop_last is None:
        drop_last = train and len(sampler if sampler is not None else dataset) >= batch_size
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Set the epoch (0-based) whose shuffle order ``loader``'s next pass uses; no-op for unshuffled loaders.

    Call it at the start of every epoch, including the first after a resume, so that both plain and
    distributed loaders give the same order as an uninterrupted run.
    """
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
