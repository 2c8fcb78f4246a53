"""Label spaces: class names to integer labels, canonical ImageNet-1k indices for wnid subsets.

A model trained on ImageNet-1k has 1000 logits ordered by sorted wnid. A dataset holding only some of those
classes (Imagenette's 10) must label each image with that canonical index, or it is scored against the
wrong columns; labelling it ``0 .. 9`` by sorted folder name gives ~0 % for every model, and a gate that
compares two models' accuracies passes on that.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources

from ..errors import UsageError

WNIDS_FILE = "imagenet1k_wnids.txt"
_WNID = re.compile(r"n\d{8}")


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids, sorted: the position of a wnid is its canonical class index.

    ``imagenet_wnids()[0] == "n01440764"`` (tench), ``[999] == "n15075141"`` (toilet tissue). Read once from
    the package's ``imagenet1k_wnids.txt`` (one wnid per line), so it works offline.
    """
    text = resources.files(__package__).joinpath(WNIDS_FILE).read_text(encoding="ascii")
    wnids = tuple(text.split())
    # A truncated or edited file would shift every canonical index after the damage: refuse it (a packaging
    # bug, hence not a UsageError).
    if len(wnids) != 1000 or list(wnids) != sorted(set(wnids)) or not all(_WNID.fullmatch(w) for w in wnids):
        raise RuntimeError(f"tdexport's {WNIDS_FILE} is damaged: expected 1000 sorted unique wnids")
    return wnids


def is_wnid(name: str) -> bool:
    """Whether ``name`` has the form of a WordNet id, ``n`` and 8 digits (ImageNet-1k or not)."""
    return _WNID.fullmatch(name) is not None


@dataclass(frozen=True)
class LabelSpace:
    """How a dataset's class names map to integer labels.

    Attributes:
        names: the class name of every label, ``names[label]``; all 1000 wnids for an ImageNet-1k subset.
        classes_present: sorted labels that some class of the dataset maps to, when fewer than
            ``len(names)``; ``None`` when every label is used.
        index: class name -> label, for the dataset's own classes.
    """

    names: tuple[str, ...]
    classes_present: tuple[int, ...] | None
    index: Mapping[str, int] = field(repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        """Width of the label space (the logits of a matching model)."""
        return len(self.names)


def _some(names: list[str], k: int = 5) -> str:
    shown = ", ".join(names[:k])
    return f"{shown}, … ({len(names)} in all)" if len(names) > k else shown


def label_space(names: Iterable[str], *, imagenet: bool, what: str) -> LabelSpace:
    """Label space of a dataset whose distinct class names are ``names``.

    With ``imagenet`` (the ``imagenet:DIR`` kind), class names that are all ImageNet-1k wnids get their
    canonical index (position in `imagenet_wnids`) in a 1000-wide space; ``classes_present`` lists the
    indices used unless all 1000 are. Names without any wnid, or any names without ``imagenet``, get their
    position in sorted order (ImageFolder's rule) in a space as wide as the class count.

    Args:
        names: the class names (folder names or labels from a file); duplicates are ignored.
        imagenet: apply the wnid rule and its checks.
        what: where the names come from, for messages, e.g. ``"class folders under /data/in/train"``.

    Raises:
        UsageError: with ``imagenet``: wnids mixed with other names, wnids that are not ImageNet-1k
            classes (ImageNet-21k ones, say), or class names that are all numbers (no agreed order).
    """
    distinct = sorted(set(names))
    plain = LabelSpace(tuple(distinct), None, {c: i for i, c in enumerate(distinct)})
    if not imagenet or not distinct:
        return plain
    wnids = [c for c in distinct if is_wnid(c)]
    if not wnids:
        if all(c.isdigit() for c in distinct):
            raise UsageError(
                f"imagenet: {what} are numbers ({_some(distinct)}); imagenet:DIR expects ImageNet wnids "
                "(n01440764 …), since numbered classes have no agreed order (0- or 1-based, devkit or sorted "
                "wnid); rename them to wnids, or use folder:DIR to label class folders by sorted name"
            )
        return plain
    others = [c for c in distinct if not is_wnid(c)]
    if others:
        raise UsageError(
            f"imagenet: {what} mix {len(wnids)} ImageNet wnids ({_some(wnids)}) with {len(others)} other names "
            f"({_some(others)}); expected only ImageNet-1k wnids (labelled by their ImageNet-1k index) or no "
            "wnid at all (labelled by sorted name)"
        )
    canonical = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [w for w in wnids if w not in canonical]
    if unknown:
        raise UsageError(
            f"imagenet: {what} include {len(unknown)} wnids that are not ImageNet-1k classes ({_some(unknown)}; "
            f"ImageNet-21k ones?); expected a subset of the 1000 ImageNet-1k wnids (n01440764 … n15075141), "
            "or use folder:DIR to label the folders by sorted name"
        )
    index = {w: canonical[w] for w in wnids}
    present = None if len(index) == len(canonical) else tuple(sorted(index.values()))
    return LabelSpace(imagenet_wnids(), present, index)
