"""Tests of tdexport.data on ImageNet layouts whose classes are wnids, and of describe_data (no image loading)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tdexport.data import DataInfo, describe_data, load_data
from tdexport.errors import UsageError

# tench, golden retriever, toilet tissue: canonical ImageNet-1k indices 0, 207, 999
SUBSET = {"n02099601": 207, "n15075141": 999, "n01440764": 0}


def write_image(path: Path, size: tuple[int, int], value: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 128)).save(path, format=fmt)


def red_of(value: int) -> float:
    """Channel 0 of a uniform image of `write_image` after ImageNet normalisation."""
    return (value / 255 - 0.485) / 0.229


def make_subset(root: Path, *, val: bool = True) -> None:
    """train/<wnid>/ (2 JPEGs each) and val/<wnid>/ (1 PNG each); the red value encodes the class index."""
    for wnid, index in SUBSET.items():
        for j in range(2):
            write_image(root / "train" / wnid / f"{wnid}_{j}.JPEG", (90, 80), index // 4 + j, "JPEG")
        if val:
            write_image(root / "val" / wnid / f"ILSVRC2012_val_{index:08d}.png", (80, 90), index // 4)


def test_wnid_subset_folders_get_canonical_labels(tmp_path):
    make_subset(tmp_path)
    bundle = load_data(f"imagenet:{tmp_path}", augment=False)
    assert (bundle.name, bundle.num_classes, bundle.classes_present) == ("imagenet", 1000, (0, 207, 999))
    assert bundle.input_shape == (3, 224, 224)
    assert bundle.test.targets == [0, 207, 999]  # sorted wnids n01440764 < n02099601 < n15075141
    assert bundle.train.targets == [0, 0, 207, 207, 999, 999]
    for ds in (bundle.train, bundle.test):
        assert len(ds.classes) == 1000
        for path, label in ds.samples:
            assert ds.classes[label] == path.parent.name and SUBSET[path.parent.name] == label
    for i, index in enumerate([0, 207, 999]):
        image, label = bundle.test[i]
        assert label == index and float(image[0].mean()) == pytest.approx(red_of(index // 4), abs=0.02)
    assert bundle.info == DataInfo("imagenet", 1000, (3, 224, 224), (0, 207, 999))
    assert bundle.info.num_classes_present == 3


def test_describe_data_matches_load_data_for_a_subset(tmp_path):
    make_subset(tmp_path)
    assert describe_data(f"imagenet:{tmp_path}") == load_data(f"imagenet:{tmp_path}").info


def test_validation_only_wnid_folders(tmp_path):
    for wnid in ("n15075141", "n01443537"):
        write_image(tmp_path / "val" / wnid / "a.JPEG", (40, 40), 7)
    bundle = load_data(f"imagenet:{tmp_path}")
    assert len(bundle.train) == 0 and bundle.test.targets == [1, 999] and bundle.classes_present == (1, 999)


@pytest.mark.parametrize("with_train", [True, False])
def test_flat_validation_with_loc_solution_is_canonical(tmp_path, with_train):
    if with_train:
        make_subset(tmp_path, val=False)
    ids = {"ILSVRC2012_val_00000003": "n15075141", "ILSVRC2012_val_00000001": "n02099601",
           "ILSVRC2012_val_00000002": "n01440764"}  # fmt: skip
    for image_id in ids:
        write_image(tmp_path / "val" / f"{image_id}.JPEG", (100, 90), 3, "JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        + "".join(f"{i},{w} 10 20 30 40 {w} 1 2 3 4 \n" for i, w in ids.items())
        + "ILSVRC2012_val_00049999,n09999999 1 2 3 4\n"  # a line for an absent image is ignored
    )
    bundle = load_data(f"imagenet:{tmp_path}")
    assert bundle.num_classes == 1000 and bundle.classes_present == (0, 207, 999)
    assert [(p.stem, label) for p, label in bundle.test.samples] == [
        ("ILSVRC2012_val_00000001", 207), ("ILSVRC2012_val_00000002", 0), ("ILSVRC2012_val_00000003", 999)
    ]  # fmt: skip
    assert describe_data(f"imagenet:{tmp_path}") == bundle.info


def test_flat_validation_with_val_labels_txt_is_canonical(tmp_path):
    names = {"b.JPEG": "n15075141", "a.JPEG": "n01440764"}
    for name in names:
        write_image(tmp_path / "val" / name, (30, 30), 1)
    (tmp_path / "val_labels.txt").write_text("".join(f"{n} {w}\n" for n, w in names.items()))
    bundle = load_data(f"imagenet:{tmp_path}")
    assert bundle.test.targets == [0, 999] and bundle.classes_present == (0, 999) and bundle.num_classes == 1000


def test_folder_kind_keeps_sorted_labels_for_wnids(tmp_path):
    make_subset(tmp_path)  # the escape hatch: folder:DIR labels 0 .. n-1 by sorted name
    bundle = load_data(f"folder:{tmp_path}")
    assert (bundle.num_classes, bundle.classes_present, bundle.test.targets) == (3, None, [0, 1, 2])


def test_mixed_wnid_and_other_folders_are_refused(tmp_path):
    make_subset(tmp_path)
    write_image(tmp_path / "train" / "cats" / "a.JPEG", (30, 30), 1)
    for call in (load_data, describe_data):
        with pytest.raises(UsageError) as info:
            call(f"imagenet:{tmp_path}")
        msg = str(info.value)
        assert info.value.exit_code == 2 and f"class folders under {tmp_path / 'train'}" in msg
        assert "3 ImageNet wnids (n01440764, n02099601, n15075141)" in msg and "1 other names (cats)" in msg


def test_imagenet_21k_wnids_are_refused(tmp_path):
    make_subset(tmp_path, val=False)
    write_image(tmp_path / "train" / "n00004475" / "a.JPEG", (30, 30), 1)
    write_image(tmp_path / "val" / "n00004475" / "b.JPEG", (30, 30), 1)
    with pytest.raises(UsageError, match=r"not ImageNet-1k classes \(n00004475;"):
        describe_data(f"imagenet:{tmp_path}")


def test_flat_labels_mixing_wnids_name_the_label_file(tmp_path):
    for name in ("a", "b"):
        write_image(tmp_path / "val" / f"{name}.JPEG", (30, 30), 1)
    (tmp_path / "val_labels.txt").write_text("a.JPEG n01440764\nb.JPEG goldfish\n")
    with pytest.raises(UsageError, match=rf"labels in {tmp_path / 'val_labels.txt'} mix 1 ImageNet wnids"):
        load_data(f"imagenet:{tmp_path}")


def test_describe_data_simple_kinds_without_torch(tmp_path):
    code = (
        "import sys; from tdexport.data import DataInfo, describe_data as d;"
        "print(d('digits') == DataInfo('digits', 10, (3, 32, 32)),"
        f" d('cifar100:{tmp_path}', download=True) == DataInfo('cifar100', 100, (3, 32, 32)),"
        " 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "False"]


def test_describe_data_checks_cifar_files_unless_downloading(tmp_path):
    with pytest.raises(UsageError, match="cifar-10-batches-py/data_batch_1 not found.*--download"):
        describe_data(f"cifar10:{tmp_path}")
    assert describe_data(f"cifar10:{tmp_path}", download=True) == DataInfo("cifar10", 10, (3, 32, 32))


@pytest.mark.parametrize("spec", ["mnist", "imagenet:", "cifar10:"])
def test_describe_data_rejects_malformed_specs(spec):
    with pytest.raises(UsageError, match="expected one of"):
        describe_data(spec)


def test_describe_data_reads_only_the_first_image(tmp_path):
    for cls in ("a", "b"):
        for j in range(3):
            write_image(tmp_path / "train" / cls / f"{j}.png", (20, 12), 5)
        write_image(tmp_path / "val" / cls / "v.png", (20, 12), 5)
    for path in sorted(tmp_path.rglob("*.png"))[1:]:  # only train/a/0.png stays a real image
        path.write_bytes(b"not an image")
    info = describe_data(f"folder:{tmp_path}")
    assert info == DataInfo("folder", 2, (3, 12, 20), None)
    bundle = load_data(f"folder:{tmp_path}")  # also lazy: a bad file only fails when its item is read
    assert bundle.info == info
    with pytest.raises(UsageError, match=r"cannot read image .*val/a/v.png"):
        bundle.test[0]
