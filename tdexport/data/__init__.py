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
  Classes are those of ``train/``, else of the validation labels (validation-only folders work; the train
  split is then empty). Labels: when the classes are ImageNet-1k wnids, their canonical ImageNet-1k index
  (position among the 1000 sorted wnids, `imagenet_wnids`), so a subset such as Imagenette is scored against
  a 1000-class model's own columns: ``num_classes`` is 1000 and ``classes_present`` lists the indices used.
  Classes with no wnid: sorted position, as ImageFolder. Wnids mixed with other names, wnids outside
  ImageNet-1k, or all-numeric class names are errors. Train: RandomResizedCrop(224) + flip; eval:
  Resize(256) + CenterCrop(224).
- ``folder:DIR``: ``DIR/train/<class>/...`` with ``DIR/val/<class>/...`` (or ``DIR/test/``), or class folders
  directly in DIR, split per class 80/20 (sorted paths shuffled with seed 0, ``round(n/5)`` held out). Labels:
  sorted class-name position (even for wnids). First image (sorted) of the first class larger than 64 px on
  a side: ImageNet's 224 transforms; else every image is resized to that image's size (train adds RandomCrop
  with 1/8 padding + flip). ImageNet and folders use ImageNet mean/std.

Images are files with an image suffix (`IMAGE_SUFFIXES`) at any depth of a class folder; dot files and dot
folders are skipped. Every class folder must hold an image, and a folder holding class folders must hold no
loose images. `describe_data` gives a spec's `DataInfo` (class count, label space, input shape) without
reading images, so a model/dataset mismatch fails before any costly work.

Importing this package is cheap (torch, torchvision, PIL and scikit-learn load on first use), so the CLI can
show `DATA_FORMS` in its help without paying for them.
"""

from ._api import describe_data, load_data
from ._folders import IMAGE_SUFFIXES
from ._labels import LabelSpace, imagenet_wnids, is_wnid, label_space
from ._loaders import make_loader, set_loader_epoch
from ._spec import (
    CIFAR_STATS,
    DATA_FORMS,
    DEFAULT_CIFAR_ROOT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataBundle,
    DataInfo,
    DataSpec,
    parse_data_spec,
)

__all__ = [
    "DATA_FORMS",
    "DataSpec",
    "DataBundle",
    "DataInfo",
    "parse_data_spec",
    "load_data",
    "describe_data",
    "make_loader",
    "set_loader_epoch",
    "LabelSpace",
    "label_space",
    "imagenet_wnids",
    "is_wnid",
    "CIFAR_STATS",
    "DEFAULT_CIFAR_ROOT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
]
