"""Bad datasets and arguments fail fast with a UsageError (exit 2) naming the problem, never silently.

These tests use only the API that predates `describe_data`, so each one also shows the old behaviour failing.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from tdexport.data import load_data, make_loader
from tdexport.errors import UsageError


def write_image(path: Path, size: tuple[int, int] = (30, 30), value: int = 9) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 128)).save(path)


def raises_usage(spec: str, pattern: str) -> str:
    with pytest.raises(UsageError, match=pattern) as info:
        load_data(spec)
    assert info.value.exit_code == 2
    return str(info.value)


@pytest.mark.parametrize("kind", ["imagenet", "folder"])
def test_empty_class_folder_is_refused(tmp_path, kind):
    # an empty train/cat would otherwise vanish and shift every later class index by one
    for split in ("train", "val"):
        write_image(tmp_path / split / "dog" / "a.png")
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    msg = raises_usage(f"{kind}:{tmp_path}", "class folder .*train/cat holds no images")
    assert ".jpeg" in msg


def test_empty_class_folder_in_a_flat_folder_dataset(tmp_path):
    for j in range(5):
        write_image(tmp_path / "b" / f"{j}.png")
    (tmp_path / "a" / "sub").mkdir(parents=True)
    raises_usage(f"folder:{tmp_path}", r"class folder .*/a holds no images")


def test_several_empty_class_folders_are_counted(tmp_path):
    write_image(tmp_path / "val" / "z" / "a.png")
    for c in ("a", "b", "c"):
        (tmp_path / "val" / c).mkdir()
    raises_usage(f"imagenet:{tmp_path}", r"val/a holds no images \(and 2 more: b, c\)")


def test_loose_images_beside_class_folders_are_refused(tmp_path):
    # an interrupted re-sorting of ImageNet's flat val/ into class folders leaves part of it loose
    write_image(tmp_path / "val" / "n01" / "ILSVRC2012_val_00000001.JPEG")
    write_image(tmp_path / "val" / "ILSVRC2012_val_00000002.JPEG")
    raises_usage(f"imagenet:{tmp_path}", r"val holds both class folders and 1 loose images .*00000002")


@pytest.mark.parametrize("kind", ["imagenet", "folder"])
def test_training_images_without_class_folders_are_refused(tmp_path, kind):
    write_image(tmp_path / "train" / "a.png")
    write_image(tmp_path / "val" / "c" / "b.png")
    raises_usage(f"{kind}:{tmp_path}", r"train holds images but no class folders")


def test_folder_with_val_but_no_train_is_refused(tmp_path):
    for split in ("val", "test"):
        for c in ("x", "y"):
            for j in range(3):
                write_image(tmp_path / split / c / f"{j}.png")
    raises_usage(f"folder:{tmp_path}", r"has .*/val but no .*/train")


def test_dot_files_are_not_images(tmp_path):
    for split in ("train", "val"):
        write_image(tmp_path / split / "a" / "x.png")
        (tmp_path / split / "a" / "._x.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    bundle = load_data(f"folder:{tmp_path}")
    assert (len(bundle.train), len(bundle.test)) == (1, 1)
    assert bundle.test[0][0].shape == (3, 30, 30)


def test_unreadable_label_file(tmp_path):
    write_image(tmp_path / "val" / "x.JPEG")
    (tmp_path / "val_labels.txt").write_bytes(b"x.JPEG n01440764\n\xff\xfe\x00garbage\n")
    raises_usage(f"imagenet:{tmp_path}", r"cannot read .*val_labels.txt")


def test_label_file_with_a_byte_order_mark(tmp_path):
    write_image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    text = "ILSVRC2012_val_00000001.JPEG n01443537\r\n"  # saved by a Windows editor: BOM and CRLF
    (tmp_path / "val_labels.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_data(f"imagenet:{tmp_path}").test.targets == [1]


def test_conflicting_labels_for_one_image(tmp_path):
    write_image(tmp_path / "val" / "x.JPEG")
    (tmp_path / "val_labels.txt").write_text("x.JPEG n01440764\nx.JPEG n01443537\n")
    raises_usage(f"imagenet:{tmp_path}", r"val_labels.txt:2: x.JPEG is labelled 'n01443537' here but 'n01440764'")


def test_loc_solution_without_its_header(tmp_path):
    write_image(tmp_path / "val" / "a.JPEG")
    write_image(tmp_path / "val" / "b.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text("a,n01440764 1 2 3 4\nb,n01443537 1 2 3 4\n")
    raises_usage(f"imagenet:{tmp_path}", r"LOC_val_solution.csv:1: expected the header 'ImageId,PredictionString'")


def test_numbered_imagenet_class_folders_are_refused(tmp_path):
    # sorted as strings, '10' would come before '2': wrong labels with the right count
    for c in ("0", "1", "2", "10"):
        write_image(tmp_path / "val" / c / "a.png")
    raises_usage(f"imagenet:{tmp_path}", r"are numbers \(0, 1, 10, 2\)")
    assert load_data(f"folder:{tmp_path / 'val'}").num_classes == 4  # folder:DIR still takes them


def test_wnid_subset_is_not_relabelled_from_zero(tmp_path):
    for wnid in ("n15075141", "n01440764"):
        write_image(tmp_path / "val" / wnid / "a.png")
    bundle = load_data(f"imagenet:{tmp_path}")
    assert bundle.num_classes == 1000 and bundle.test.targets == [0, 999]


def test_mixed_wnid_and_other_class_folders_are_refused(tmp_path):
    for c in ("n01440764", "dogs"):
        write_image(tmp_path / "val" / c / "a.png")
    raises_usage(f"imagenet:{tmp_path}", r"mix 1 ImageNet wnids \(n01440764\) with 1 other names \(dogs\)")


def test_imagenet_21k_wnid_folders_are_refused(tmp_path):
    for c in ("n01440764", "n00004475"):
        write_image(tmp_path / "val" / c / "a.png")
    raises_usage(f"imagenet:{tmp_path}", r"not ImageNet-1k classes \(n00004475;")


def test_corrupt_image_fails_with_its_path_when_read(tmp_path):
    for split in ("train", "val"):
        write_image(tmp_path / split / "a" / "0.png", (80, 80))
    (tmp_path / "val" / "a" / "1.png").write_bytes(b"\x89PNG truncated")
    bundle = load_data(f"folder:{tmp_path}")
    with pytest.raises(UsageError, match=r"cannot read image .*val/a/1.png"):
        list(make_loader(bundle.test, batch_size=2, train=False))


def test_cifar_meta_without_class_names(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    batch = {b"data": torch.zeros(2, 3072, dtype=torch.uint8).numpy(), b"fine_labels": [0, 99]}
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"coarse_label_names": [b"x"] * 20}, protocol=2))
    raises_usage(f"cifar100:{tmp_path}", r"meta is not a cifar100 meta file: expected 'fine_label_names' with 100")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"seed": 2**64}, "seed must be an integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"batch_size": 2.5}, "batch size must be an integer"),
        ({"batch_size": True}, "batch size must be an integer"),
        ({"workers": -1}, "workers >= 0"),
    ],
)
def test_loader_rejects_bad_numbers(kwargs, pattern):
    dataset = torch.utils.data.TensorDataset(torch.arange(4))
    with pytest.raises(UsageError, match=pattern):
        make_loader(dataset, **{"batch_size": 2, "train": True, **kwargs})


@pytest.mark.parametrize("seed", [-(2**63), 2**64 - 2**32 - 1, -1])
def test_loader_accepts_every_seed_torch_takes(seed):
    dataset = torch.utils.data.TensorDataset(torch.arange(4))
    loader = make_loader(dataset, batch_size=2, train=True, seed=seed)
    assert sorted(int(v) for (b,) in loader for v in b) == [0, 1, 2, 3]
