"""Image-file datasets: ``imagenet:DIR`` and ``folder:DIR`` layouts, scanned, checked and labelled.

A layout is scanned in two steps. `scan` reads only directory names, label files and the header of one
image: enough for `DataInfo` (class count, label space, input shape) and for every layout error, so a bad
spec fails before any work. `load` then lists every image of the scanned splits and builds the datasets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError, first_line
from ._labels import LabelSpace, label_space
from ._spec import IMAGENET_MEAN, IMAGENET_STD, DataBundle, DataInfo, compose

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
LAYOUTS = {
    "imagenet": "DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG, or flat DIR/val/*.JPEG with DIR/val_labels.txt "
    "('<filename> <wnid>' lines) or DIR/LOC_val_solution.csv",
    "folder": "DIR/train/<class>/* with DIR/val/<class>/* (or DIR/test/), or class folders DIR/<class>/*",
}
_Sample = tuple[Path, str]  # (image file, class name)


class ImageFiles:
    """Map-style dataset of image files: item ``i`` is ``(transform(RGB PIL image), label)``.

    Attributes:
        samples: ``(path, label)`` of every image, in item order.
        classes: class name of every label, ``classes[label]`` (all 1000 wnids for an ImageNet-1k subset).
        targets: the labels, in item order.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], classes: list[str], transform: Callable) -> None:
        self.samples, self.classes, self.transform = list(samples), classes, transform
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        path, label = self.samples[i]
        try:  # a corrupt file deep in a split would otherwise surface as a PIL traceback from a worker
            with Image.open(path) as im:
                image = im.convert("RGB")
        except Exception as err:
            raise UsageError(f"cannot read image {path}: {first_line(err)}") from err
        return self.transform(image), label


def _is_image(name: str) -> bool:
    # Dot files are skipped: macOS copies leave '._<name>.JPEG' metadata files beside every image.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _walk(d: Path, name: str) -> Any:
    """os.walk over ``d`` skipping dot folders, following symlinked folders (as ImageFolder); errors raise."""

    def fail(err: OSError) -> None:
        raise UsageError(f"{name}: cannot list {err.filename}: {err.strerror or err}")

    for top, dirs, files in os.walk(d, onerror=fail, followlinks=True):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        yield top, files


def _images(d: Path, name: str) -> list[Path]:
    """Image files under ``d`` at any depth, sorted."""
    return sorted(Path(top, f) for top, files in _walk(d, name) for f in files if _is_image(f))


def _has_image(d: Path, name: str) -> bool:
    """Whether ``d`` holds an image at any depth (as `_images`), stopping at the first one found."""
    stack = [d]
    while stack:  # os.walk would list a whole folder first: ImageNet's train/ has 1300 files per class
        top = stack.pop()
        try:
            with os.scandir(top) as entries:
                for e in entries:
                    if e.name.startswith("."):
                        continue
                    if e.is_dir():
                        stack.append(Path(e.path))
                    elif _is_image(e.name):
                        return True
        except OSError as err:
            raise UsageError(f"{name}: cannot list {top}: {err.strerror or err}") from err
    return False


@dataclass
class _Split:
    """One split as scanned: its class folders, or the (image, class) samples of a flat labelled folder.

    Attributes:
        where: the split's directory.
        classes: sorted distinct class names.
        what: where the class names come from, for messages.
        flat: the samples of a flat layout (listed while scanning, since its labels depend on the files);
            ``None`` for class folders, listed by `samples`.
    """

    where: Path
    classes: list[str]
    what: str
    flat: list[_Sample] | None = None

    def samples(self, name: str) -> list[_Sample]:
        """Every ``(image, class name)`` of the split: by class, then path (flat layout: by path)."""
        if self.flat is not None:
            return self.flat
        return [(p, c) for c in self.classes for p in _images(self.where / c, name)]

    def first_image(self, name: str) -> Path:
        """The first image of the split's first class in sorted order (flat layout: the first by path)."""
        if self.flat is not None:
            return self.flat[0][0]
        return _images(self.where / self.classes[0], name)[0]


def _entries(d: Path, name: str) -> tuple[list[str], list[str]]:
    """``(sorted class folder names, sorted loose image file names)`` directly in ``d``."""
    try:
        with os.scandir(d) as it:
            entries = list(it)
    except OSError as err:
        raise UsageError(f"{name}: cannot list {d}: {err.strerror or err}") from err
    folders = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    loose = sorted(e.name for e in entries if _is_image(e.name) and not e.is_dir())
    return folders, loose


def _class_split(name: str, d: Path, folders: list[str], loose: list[str]) -> _Split:
    """The split of class folders ``folders`` in ``d``, checked: no loose images beside them, none empty."""
    if loose:
        raise UsageError(
            f"{name}: {d} holds both class folders and {len(loose)} loose images (e.g. {d / loose[0]}); expected "
            "every image inside a class folder (an interrupted re-sorting leaves the loose ones unlabelled)"
        )
    empty = [c for c in folders if not _has_image(d / c, name)]
    if empty:
        more = f" (and {len(empty) - 1} more: {', '.join(empty[1:4])}{', …' if len(empty) > 4 else ''})"
        raise UsageError(
            f"{name}: class folder {d / empty[0]} holds no images{more if len(empty) > 1 else ''}; every class "
            f"folder needs at least one image ({', '.join(sorted(IMAGE_SUFFIXES))}): fill or remove it"
        )
    return _Split(d, folders, f"class folders under {d}")


def _read_labels(path: Path, name: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a file saved on Windows may start with a BOM
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{name}: cannot read {path}: {first_line(err)}") from err


def _flat_val(root: Path, val: Path, images: list[Path]) -> _Split:
    """The flat ImageNet validation folder, labelled by ``val_labels.txt`` or, else, ``LOC_val_solution.csv``.

    ``val_labels.txt``: lines ``<filename> <wnid>``. ``LOC_val_solution.csv`` (Kaggle): a header
    ``ImageId,PredictionString``, then ``<image id>,<wnid> <box> [<wnid> <box> ...]``. Files match images by
    name without suffix. Lines for absent images are ignored (a validation subset is fine); an image
    without a line is an error.
    """
    txt, csv = root / "val_labels.txt", root / "LOC_val_solution.csv"
    if not (txt.is_file() or csv.is_file()):
        raise UsageError(f"imagenet: {val} holds images but no class folders; expected {txt} or {csv}")
    path = txt if txt.is_file() else csv
    lines, start = _read_labels(path, "imagenet"), 0
    if path == csv:
        header = lines[0] if lines else ""
        if [h.strip().lower() for h in header.split(",")][:2] != ["imageid", "predictionstring"]:
            raise UsageError(f"{path}:1: expected the header 'ImageId,PredictionString', got {header!r}")
        start = 1
    form = "'<filename> <wnid>'" if path == txt else "'<ImageId>,<wnid> <box> ...'"
    labels: dict[str, str] = {}
    for n, line in enumerate(lines[start:], start + 1):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        if len(fields) < 2:
            raise UsageError(f"{path}:{n}: expected {form}, got {line!r}")
        key, label = Path(fields[0]).stem, fields[1]
        if labels.setdefault(key, label) != label:
            raise UsageError(f"{path}:{n}: {fields[0]} is labelled {label!r} here but {labels[key]!r} before")
    missing = [p for p in images if p.stem not in labels]
    if missing:
        raise UsageError(f"imagenet: {path} has no label for {missing[0]} ({len(missing)} unlabelled images)")
    samples = [(p, labels[p.stem]) for p in images]
    return _Split(val, sorted({c for _, c in samples}), f"labels in {path}", samples)


@dataclass
class Scan:
    """A folder dataset as scanned (see the module doc).

    Attributes:
        name: ``"imagenet"`` or ``"folder"``.
        root: the spec's DIR.
        train: the training split; ``None`` when there is none (validation-only ImageNet).
        val: the validation split; for ``folder:DIR`` with class folders directly in DIR, that same split,
            divided 80/20 by `load`.
        space: the label space (from the training classes, else the validation classes).
        input_shape: ``(3, H, W)`` the images are transformed to.
        split_80_20: the class folders are directly in DIR and `load` splits them.
    """

    name: str
    root: Path
    train: _Split | None
    val: _Split
    space: LabelSpace
    input_shape: tuple[int, int, int]
    split_80_20: bool = False

    @property
    def info(self) -> DataInfo:
        """The `DataInfo` of the dataset."""
        return DataInfo(self.name, self.space.num_classes, self.input_shape, self.space.classes_present)


def _image_size(name: str, path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
    except Exception as err:
        raise UsageError(f"{name}: cannot read image {path}: {first_line(err)}") from err
    return h, w


def _finish(name: str, root: Path, train: _Split | None, val: _Split | None, split_80_20: bool = False) -> Scan:
    if val is None:
        raise UsageError(f"{name}: no {'validation' if train else 'labelled'} images found under {root}; "
                         f"expected {LAYOUTS[name]}")  # fmt: skip
    ref = train or val
    space = label_space(ref.classes, imagenet=name == "imagenet", what=ref.what)
    unknown = sorted(set(val.classes) - set(ref.classes))
    if unknown:
        raise UsageError(f"{name}: validation class {unknown[0]!r} under {root} has no training folder")
    first = ref.first_image(name)
    h, w = _image_size(name, first)  # the image is opened even for ImageNet's fixed 224: a bad file fails now
    shape = (3, 224, 224) if name == "imagenet" or max(h, w) > 64 else (3, h, w)
    return Scan(name, root, train, val, space, shape, split_80_20)


def _scan_imagenet(root: Path) -> Scan:
    name = "imagenet"
    train = val = None
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir():
        folders, loose = _entries(train_dir, name)
        if folders:
            train = _class_split(name, train_dir, folders, loose)
        elif loose:
            raise UsageError(f"imagenet: {train_dir} holds images but no class folders; expected "
                             f"{train_dir}/<wnid>/*.JPEG")  # fmt: skip
    if val_dir.is_dir():
        folders, loose = _entries(val_dir, name)
        if folders:
            val = _class_split(name, val_dir, folders, loose)
        elif loose:
            val = _flat_val(root, val_dir, _images(val_dir, name))
    return _finish(name, root, train, val)


def _scan_folder(root: Path) -> Scan:
    name = "folder"
    if (root / "train").is_dir():
        second = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
        if second is None:
            raise UsageError(f"folder: {root / 'train'} has no sibling {root / 'val'} or {root / 'test'}")
        splits = []
        for d in (root / "train", second):
            folders, loose = _entries(d, name)
            if not folders and loose:
                raise UsageError(f"folder: {d} holds images but no class folders; expected {d}/<class>/*")
            splits.append(_class_split(name, d, folders, loose) if folders else None)
        return _finish(name, root, *splits)
    stray = [root / s for s in ("val", "test") if (root / s).is_dir()]
    if stray:  # else 'val' and 'test' would be taken for two classes
        raise UsageError(f"folder: {root} has {stray[0]} but no {root / 'train'}; expected {LAYOUTS[name]}")
    folders, loose = _entries(root, name)
    return _finish(name, root, None, _class_split(name, root, folders, loose) if folders else None, True)


def scan(name: str, root: Path) -> Scan:
    """Scan the ``imagenet`` or ``folder`` dataset at ``root``: folder names, label files, one image header.

    Class folders are not listed in full (one image proves a folder non-empty); a flat validation folder is,
    since its labels are per file. No image but the first is opened.

    Raises:
        UsageError: a missing directory, a layout that matches no accepted form, an empty class folder,
            images beside class folders, unreadable or malformed label files, unlabelled images, validation
            classes without a training folder, a bad class naming (see `label_space`), an unreadable first
            image. Each message names the path and what was expected.
    """
    if not root.is_dir():
        raise UsageError(f"{name}: {root} is not a directory; expected {LAYOUTS[name]}")
    return (_scan_imagenet if name == "imagenet" else _scan_folder)(root)


def _split_80_20(samples: list[_Sample]) -> tuple[list[_Sample], list[_Sample]]:
    """Per class: sorted paths shuffled with seed 0, ``round(n / 5)`` held out (at least one kept for training)."""
    import torch

    by_class: dict[str, list[_Sample]] = {}
    for item in samples:
        by_class.setdefault(item[1], []).append(item)
    g, train, val = torch.Generator().manual_seed(0), [], []
    for items in by_class.values():  # insertion order = sorted class names, so the split is deterministic
        order, k = torch.randperm(len(items), generator=g).tolist(), round(len(items) / 5)
        val += [items[i] for i in order[:k]]
        train += [items[i] for i in order[k:]]
    return train, val


def load(scan: Scan, augment: bool) -> DataBundle:
    """List the images of a `Scan` and build its datasets.

    Transforms: ImageNet and folders with a first image larger than 64 px on a side: train
    RandomResizedCrop(224) + flip, eval Resize(256) + CenterCrop(224); smaller folder images: resized to the
    first image's size (train adds RandomCrop with 1/8 padding + flip). ImageNet mean/std.

    Args:
        scan: the result of `scan`.
        augment: use the training transforms on ``train``; else the evaluation ones.
    """
    from torchvision import transforms as T

    name, (_, h, w) = scan.name, scan.input_shape
    if scan.split_80_20:
        train, val = _split_80_20(scan.val.samples(name))
    else:
        train, val = scan.train.samples(name) if scan.train else [], scan.val.samples(name)
    if scan.input_shape == (3, 224, 224):
        aug = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
        eval_tf = compose([T.Resize(256), T.CenterCrop(224)], IMAGENET_MEAN, IMAGENET_STD)
    else:
        aug = [T.Resize((h, w)), T.RandomCrop((h, w), padding=max(1, min(h, w) // 8)), T.RandomHorizontalFlip()]
        eval_tf = compose([T.Resize((h, w))], IMAGENET_MEAN, IMAGENET_STD)
    train_tf = compose(aug, IMAGENET_MEAN, IMAGENET_STD) if augment else eval_tf
    index, classes = scan.space.index, list(scan.space.names)
    ds_train = ImageFiles([(p, index[c]) for p, c in train], classes, train_tf)
    ds_val = ImageFiles([(p, index[c]) for p, c in val], classes, eval_tf)
    info = scan.info
    return DataBundle(name, ds_train, ds_val, info.num_classes, info.input_shape, IMAGENET_MEAN, IMAGENET_STD,
                      info.classes_present)  # fmt: skip
