"""Tests of tdexport.data's label spaces: the shipped ImageNet-1k wnid list and the canonical wnid mapping."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest

from tdexport.data import LabelSpace, imagenet_wnids, is_wnid, label_space
from tdexport.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_wnid_file_loads_through_importlib_resources():
    text = resources.files("tdexport.data").joinpath("imagenet1k_wnids.txt").read_text(encoding="ascii")
    wnids = text.splitlines()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    # well-known indices of the ImageNet-1k head: tench, goldfish, golden retriever, toilet tissue
    assert [wnids[i] for i in (0, 1, 207, 999)] == ["n01440764", "n01443537", "n02099601", "n15075141"]
    assert imagenet_wnids() == tuple(wnids)


def test_pyproject_ships_the_wnid_file_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["tdexport.data"]
    assert any(fnmatch("imagenet1k_wnids.txt", g) for g in globs)
    assert (ROOT / "tdexport" / "data" / "imagenet1k_wnids.txt").is_file()


def test_all_1000_wnids_give_the_identity():
    wnids = imagenet_wnids()
    space = label_space(reversed(wnids), imagenet=True, what="class folders")
    assert space.num_classes == 1000 and space.classes_present is None
    assert space.names == wnids
    assert [space.index[w] for w in wnids] == list(range(1000))


def test_a_wnid_subset_gets_canonical_indices():
    space = label_space(["n15075141", "n01440764", "n02099601", "n01440764"], imagenet=True, what="x")
    assert space.num_classes == 1000 and space.names == imagenet_wnids()
    assert space.classes_present == (0, 207, 999)
    assert dict(space.index) == {"n01440764": 0, "n02099601": 207, "n15075141": 999}


def test_999_of_1000_wnids_is_still_a_subset():
    wnids = imagenet_wnids()
    space = label_space(wnids[:500] + wnids[501:], imagenet=True, what="x")
    assert space.num_classes == 1000 and space.classes_present == tuple(i for i in range(1000) if i != 500)
    assert space.index[wnids[501]] == 501


@pytest.mark.parametrize("imagenet", [True, False])
def test_names_without_wnids_are_sorted_as_image_folder(imagenet):
    space = label_space(["dog", "cat", "n01", "dog"], imagenet=imagenet, what="x")
    assert space == LabelSpace(("cat", "dog", "n01"), None, {})
    assert (space.num_classes, dict(space.index)) == (3, {"cat": 0, "dog": 1, "n01": 2})


def test_without_imagenet_wnids_are_plain_names():
    space = label_space(["n15075141", "n01440764"], imagenet=False, what="x")
    assert (space.names, space.classes_present, space.index["n15075141"]) == (("n01440764", "n15075141"), None, 1)


def test_mixing_wnids_and_other_names_is_a_usage_error():
    with pytest.raises(UsageError) as info:
        label_space(["n01440764", "n02099601", "cats", "n0144076"], imagenet=True, what="class folders under D")
    msg = str(info.value)
    assert info.value.exit_code == 2
    assert "class folders under D" in msg and "2 ImageNet wnids (n01440764, n02099601)" in msg
    assert "2 other names (cats, n0144076)" in msg and "expected only ImageNet-1k wnids" in msg


def test_wnids_outside_imagenet_1k_are_a_usage_error():
    # n00004475 ('organism') is an ImageNet-21k class, not one of the 1000
    pattern = r"1 wnids that are not ImageNet-1k classes \(n00004475;.*n01440764 … n15075141"
    with pytest.raises(UsageError, match=pattern):
        label_space(["n01440764", "n00004475"], imagenet=True, what="x")


def test_numbered_classes_are_refused_for_imagenet_only():
    with pytest.raises(UsageError, match=r"x are numbers \(0, 1, 10, 2\).*folder:DIR"):
        label_space(["0", "1", "2", "10"], imagenet=True, what="x")
    assert label_space(["0", "1", "2", "10"], imagenet=False, what="x").names == ("0", "1", "10", "2")


def test_long_name_lists_are_abbreviated():
    wnids = list(imagenet_wnids()[:8])
    with pytest.raises(UsageError, match=r"8 ImageNet wnids \(n01440764, .*, … \(8 in all\)\)"):
        label_space([*wnids, "x"], imagenet=True, what="x")


def test_is_wnid():
    assert is_wnid("n01440764") and is_wnid("n00004475")
    assert not any(is_wnid(s) for s in ("n0144076", "n014407640", "N01440764", "n01440764 ", "cat"))
