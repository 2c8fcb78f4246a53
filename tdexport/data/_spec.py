"""The ``--data`` spec, the dataset constants, and what a loaded or described dataset exposes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

DATA_FORMS = "digits, cifar10[:DIR], cifar100[:DIR], imagenet:DIR, folder:DIR"
DEFAULT_CIFAR_ROOT = Path("data")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Per-channel mean and (population) std of the training pixels, in [0, 1] units.
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
Stats = tuple[float, float, float]


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


def as_spec(spec: DataSpec | str) -> DataSpec:
    """``spec`` parsed if it is text; a hand-made `DataSpec` is checked for the fields its kind needs.

    Raises:
        UsageError: malformed spec.
    """
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    ok = spec.kind in ("digits", *CIFAR_STATS) or (spec.kind in ("imagenet", "folder") and spec.root is not None)
    if not ok:
        raise UsageError(f"malformed --data {spec.text!r}; expected one of: {DATA_FORMS}")
    return spec


@dataclass(frozen=True)
class DataInfo:
    """What a dataset is, known without reading its images: enough to check it against a model.

    Attributes:
        name: the spec's kind, e.g. ``"cifar10"``, ``"imagenet"``.
        num_classes: width of the label space the labels live in, i.e. the logits a matching model has;
            labels are in ``0 .. num_classes - 1``. 1000 for a subset of ImageNet-1k wnids.
        input_shape: ``(3, H, W)`` of one image.
        classes_present: sorted labels the dataset actually uses, when that is a strict subset of the label
            space (an ImageNet-1k wnid subset such as Imagenette); ``None`` when every label is used. Top-1
            over a subset is meant over these logit columns only.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    classes_present: tuple[int, ...] | None = None

    @property
    def num_classes_present(self) -> int:
        """Number of distinct labels the dataset uses: ``len(classes_present)``, else ``num_classes``."""
        return self.num_classes if self.classes_present is None else len(self.classes_present)


@dataclass
class DataBundle:
    """Train and test datasets of one spec, with what a model and its exporter need to know.

    Attributes:
        name: the spec's kind, e.g. ``"digits"``, ``"cifar10"``.
        train: map-style dataset of ``(image float32 (3, H, W), int label)``, training transforms (when augmenting).
        test: the test / validation split, evaluation transforms.
        num_classes: width of the label space; labels are in ``0 .. num_classes - 1`` (see `DataInfo`).
        input_shape: ``(3, H, W)`` of one image: ``(3, 32, 32)`` or ``(3, 224, 224)`` (folder: see package doc).
        mean: per-channel mean subtracted from [0, 1] pixels (an exporter folding normalisation needs it).
        std: per-channel std the centred pixels were divided by.
        classes_present: the labels in use when they are a strict subset of the label space, else ``None``
            (see `DataInfo`).
    """

    name: str
    train: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: Stats
    std: Stats
    classes_present: tuple[int, ...] | None = None

    @property
    def info(self) -> DataInfo:
        """The `DataInfo` of this bundle (equal to `describe_data` of its spec)."""
        return DataInfo(self.name, self.num_classes, tuple(self.input_shape), self.classes_present)  # type: ignore


def compose(augmentation: list[Any], mean: Stats, std: Stats) -> Any:
    """The torchvision transform: ``augmentation``, then ToTensor and Normalize(mean, std)."""
    from torchvision import transforms as T

    return T.Compose([*augmentation, T.ToTensor(), T.Normalize(mean, std)])
