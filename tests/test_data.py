"""Tests of tdexport.data: spec parsing, digits, CIFAR/ImageNet/folder layouts on disk, seeded loaders."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tdexport import data
from tdexport.data import DATA_FORMS, DataSpec, load_data, make_loader, parse_data_spec, set_loader_epoch
from tdexport.errors import UsageError

# ---------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("text", "kind", "root"),
    [
        ("digits", "digits", None),
        ("cifar10", "cifar10", Path("data")),
        ("cifar100:/srv/c100", "cifar100", Path("/srv/c100")),
        ("CIFAR10:rel/dir", "cifar10", Path("rel/dir")),
        ("imagenet:/datasets/imagenet", "imagenet", Path("/datasets/imagenet")),
        ("folder:some/dir", "folder", Path("some/dir")),
    ],
)
def test_parse_valid_specs(text, kind, root):
    assert parse_data_spec(text) == DataSpec(kind, root, text)


def test_parse_expands_user():
    assert parse_data_spec("folder:~/x").root == Path.home() / "x"


@pytest.mark.parametrize("text", ["cifar10:", "mnist", "imagenet", "imagenet:", "folder", "digits:x", "", ":x"])
def test_malformed_specs_name_the_accepted_forms(text):
    with pytest.raises(UsageError) as info:
        parse_data_spec(text)
    assert DATA_FORMS in str(info.value)
    assert info.value.exit_code == 2


def test_load_data_accepts_text_and_rejects_malformed():
    with pytest.raises(UsageError, match="cifar10\\[:DIR\\]"):
        load_data("mnist")


def test_load_data_rejects_a_hand_made_spec_without_dir():
    with pytest.raises(UsageError, match="imagenet:DIR"):
        load_data(DataSpec("imagenet", None, "imagenet"))


def test_import_does_not_load_torch():
    code = "import sys, tdexport.data as d; d.parse_data_spec('cifar10'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", augment=False)


@pytest.fixture(scope="module")
def digits_aug():
    return load_data(DataSpec("digits", None, "digits"))


def test_digits_split_sizes_and_shapes(digits):
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.input_shape == (3, 32, 32)
    image, label = digits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    test_labels = digits.test.tensors[1]
    # stratified: every class keeps ~20% of its 174..183 images in the test split
    assert torch.bincount(test_labels, minlength=10).tolist() == pytest.approx([36] * 10, abs=1)


def test_digits_train_split_is_normalised_per_channel(digits):
    x = digits.train.tensors[0]
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5)
    mean, std = np.array(digits.mean), np.array(digits.std)
    assert mean.shape == (3,) and np.allclose(mean, mean[0]) and 0.2 < mean[0] < 0.4  # grey replicated
    assert np.allclose(std, std[0]) and 0.3 < std[0] < 0.5
    # de-normalised pixels are back in [0, 1] and a stroke reaches full ink (16/16)
    raw = (
        x * torch.tensor(std, dtype=torch.float32)[:, None, None]
        + torch.tensor(mean, dtype=torch.float32)[:, None, None]
    )
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5 and raw.max() > 0.99


def test_digits_pixels_are_the_resized_originals(digits):
    from sklearn.datasets import load_digits

    ref = load_digits()
    ref_x = F.interpolate(torch.tensor(ref.images, dtype=torch.float32)[:, None] / 16, size=32, mode="bilinear")
    x, y = digits.test.tensors
    raw = x[:, 0] * digits.std[0] + digits.mean[0]
    # every test image is one of the originals, with the original's label
    dists = torch.cdist(raw.flatten(1), ref_x.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    nearest = dists.argmin(dim=1)
    assert dists.min(dim=1).values.max() < 1e-4
    assert torch.equal(torch.as_tensor(ref.target)[nearest], y)
    assert len(set(nearest.tolist())) == 360


def test_digits_split_is_deterministic(digits):
    again = load_data("digits", augment=False)
    for a, b in zip(digits.train.tensors + digits.test.tensors, again.train.tensors + again.test.tensors, strict=True):
        assert torch.equal(a, b)
    assert (again.mean, again.std) == (digits.mean, digits.std)


def test_digits_augmentation_translates_without_flipping(digits, digits_aug):
    assert digits_aug.mean == digits.mean
    background = -digits.mean[0] / digits.std[0]  # raw 0 after normalisation
    torch.manual_seed(0)
    changed, offsets = 0, set()
    for i in range(0, 1437, 29):
        plain = digits.train[i][0]
        padded = F.pad(plain, (2, 2, 2, 2), value=background)
        image, label = digits_aug.train[i]
        assert image.shape == (3, 32, 32) and label == digits.train[i][1]
        matches = [
            (dy, dx) for dy in range(5) for dx in range(5)
            if torch.allclose(image, padded[:, dy : dy + 32, dx : dx + 32], atol=1e-5)
        ]  # fmt: skip
        assert matches, f"item {i} is not a translation of its image"
        assert not torch.allclose(image, plain.flip(-1)) or torch.allclose(plain, plain.flip(-1))
        offsets.update(matches)
        changed += not torch.equal(image, plain)
    assert changed > 30 and len(offsets) > 10
    assert torch.equal(digits_aug.test.tensors[0], digits.test.tensors[0])  # eval split never augmented


def test_digits_loader_epoch_is_fast_and_batched(digits_aug):
    import time

    loader = make_loader(digits_aug.train, batch_size=128, train=True)
    start = time.perf_counter()
    batches = list(loader)
    elapsed = time.perf_counter() - start
    assert len(batches) == 1437 // 128  # training drops the last partial batch
    images, labels = batches[0]
    assert images.shape == (128, 3, 32, 32) and labels.dtype == torch.int64
    assert elapsed < 2.0


# -------------------------------------------------------------------------------------------- loaders


def index_dataset(n: int = 10) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(torch.arange(n))


def order(loader) -> list[int]:
    return [int(v) for (batch,) in loader for v in batch]


def test_train_loader_order_is_seeded_and_reproducible_per_epoch():
    a = make_loader(index_dataset(), batch_size=3, train=True, seed=7)
    b = make_loader(index_dataset(), batch_size=3, train=True, seed=7)
    epochs = [order(a) for _ in range(3)]
    assert [order(b) for _ in range(3)] == epochs
    assert all(len(e) == 9 and len(set(e)) == 9 for e in epochs)  # 10 // 3 full batches
    assert epochs[0] != epochs[1] != epochs[2]
    assert order(make_loader(index_dataset(), batch_size=3, train=True, seed=8)) != epochs[0]
    resumed = make_loader(index_dataset(), batch_size=3, train=True, seed=7)
    set_loader_epoch(resumed, 2)  # a resumed run reproduces epoch 2 without replaying 0 and 1
    assert order(resumed) == epochs[2]
    set_loader_epoch(a, 1)
    assert order(a) == epochs[1]


def test_eval_loader_keeps_order_and_last_batch():
    loader = make_loader(index_dataset(), batch_size=3, train=False)
    assert order(loader) == list(range(10))
    set_loader_epoch(loader, 5)  # no sampler with an epoch: a no-op
    assert order(loader) == list(range(10))
    assert order(make_loader(index_dataset(), batch_size=3, train=True, drop_last=False)).__len__() == 10


def test_small_train_set_keeps_its_only_batch():
    assert len(order(make_loader(index_dataset(4), batch_size=8, train=True))) == 4


def test_loader_rejects_bad_batch_size():
    with pytest.raises(UsageError):
        make_loader(index_dataset(), batch_size=0, train=True)


def test_loader_with_workers_gives_the_same_order():
    plain = make_loader(index_dataset(), batch_size=3, train=True, seed=3)
    workers = make_loader(index_dataset(), batch_size=3, train=True, seed=3, workers=2)
    assert workers.persistent_workers and not plain.persistent_workers
    assert [order(workers) for _ in range(2)] == [order(plain) for _ in range(2)]


@pytest.fixture
def fake_world(monkeypatch):
    def set_world(world: int, rank: int) -> None:
        monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: world)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)

    return set_world


def test_distributed_loader_shards_and_follows_the_epoch(fake_world):
    shards = []
    for rank in range(2):
        fake_world(2, rank)
        loader = make_loader(index_dataset(), batch_size=2, train=True, seed=5, distributed=True)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        first = order(loader)
        assert order(loader) == first  # without set_loader_epoch, DistributedSampler repeats its order
        set_loader_epoch(loader, 1)
        shards.append((first, order(loader)))
    for epoch in range(2):
        a, b = shards[0][epoch], shards[1][epoch]
        assert len(a) == len(b) == 4 and sorted(a + b) != a + b  # 5 each, last pair dropped, shuffled
        assert not set(a) & set(b)
    assert shards[0][0] != shards[0][1]
    fake_world(1, 0)
    single = make_loader(index_dataset(), batch_size=2, train=True, seed=5, distributed=True)
    assert order(single) == order(make_loader(index_dataset(), batch_size=2, train=True, seed=5))


def test_distributed_eval_loader_is_unshuffled(fake_world):
    fake_world(2, 1)
    loader = make_loader(index_dataset(), batch_size=4, train=False, distributed=True)
    assert order(loader) == [1, 3, 5, 7, 9]


# ---------------------------------------------------------------------------------------------- CIFAR


def write_pickle(path: Path, obj, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def cifar_batch(rng, n: int, label_key: bytes, n_classes: int, bytes_keys: bool = True) -> dict:
    batch = {
        b"batch_label": b"fixture",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, n_classes, size=n).tolist(),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    return batch if bytes_keys else {k.decode(): v for k, v in batch.items()}


def make_cifar10(root: Path, bytes_keys: bool = True) -> dict[str, dict]:
    """A tiny cifar-10-batches-py: 5 train batches of 2 images, a test batch of 3, batches.meta."""
    rng, folder, batches = np.random.default_rng(0), root / "cifar-10-batches-py", {}
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 3)]:
        batches[name] = cifar_batch(rng, n, b"labels", 10, bytes_keys)
        write_pickle(folder / name, batches[name], protocol=2 if bytes_keys else 4)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 2, b"num_vis": 3072})
    return batches


def make_cifar100(root: Path) -> dict[str, dict]:
    rng, folder, batches = np.random.default_rng(1), root / "cifar-100-python", {}
    for name, n in (("train", 4), ("test", 2)):
        batches[name] = cifar_batch(rng, n, b"fine_labels", 100)
        batches[name][b"coarse_labels"] = [0] * n
        write_pickle(folder / name, batches[name])
    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": [b"x"] * 20}
    write_pickle(folder / "meta", meta)
    return batches


def expected_pixel(batch: dict, i: int, c: int, row: int, col: int, kind: str) -> float:
    v = int(batch[b"data"][i, c * 1024 + row * 32 + col])
    mean, std = data.CIFAR_STATS[kind]
    return (v / 255 - mean[c]) / std[c]


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_fixture_loads_with_labels_and_pixels(tmp_path, bytes_keys):
    batches = make_cifar10(tmp_path, bytes_keys)
    if not bytes_keys:  # expected_pixel reads bytes keys
        batches = {n: {k.encode(): v for k, v in b.items()} for n, b in batches.items()}
    bundle = load_data(f"cifar10:{tmp_path}", augment=False)
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("cifar10", 10, (3, 32, 32))
    assert (bundle.mean, bundle.std) == data.CIFAR_STATS["cifar10"]
    assert (len(bundle.train), len(bundle.test)) == (10, 3)
    train_labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][b"labels"]]
    assert bundle.train.targets == train_labels
    assert bundle.train.classes[3] == "cat" and bundle.train.class_to_idx["truck"] == 9
    image, label = bundle.test[1]
    assert image.shape == (3, 32, 32) and label == batches["test_batch"][b"labels"][1]
    for c, row, col in [(0, 0, 0), (1, 5, 17), (2, 31, 30)]:
        assert float(image[c, row, col]) == pytest.approx(
            expected_pixel(batches["test_batch"], 1, c, row, col, "cifar10"), abs=1e-5
        )
    image, _ = bundle.train[7]  # 7 = data_batch_4, image 1: batches concatenate in order
    assert float(image[2, 10, 3]) == pytest.approx(
        expected_pixel(batches["data_batch_4"], 1, 2, 10, 3, "cifar10"), abs=1e-5
    )


def test_cifar10_training_augmentation(tmp_path):
    make_cifar10(tmp_path)
    bundle = load_data(f"cifar10:{tmp_path}")
    plain = load_data(f"cifar10:{tmp_path}", augment=False)
    torch.manual_seed(0)
    draws = [bundle.train[0][0] for _ in range(8)]
    assert all(d.shape == (3, 32, 32) for d in draws)
    assert sum(not torch.equal(d, plain.train[0][0]) for d in draws) >= 6
    assert torch.equal(bundle.test[0][0], plain.test[0][0])


def test_cifar100_fixture_loads_fine_labels(tmp_path):
    batches = make_cifar100(tmp_path)
    bundle = load_data(f"cifar100:{tmp_path}", augment=False)
    assert (bundle.name, bundle.num_classes, len(bundle.train), len(bundle.test)) == ("cifar100", 100, 4, 2)
    assert bundle.train.targets == batches["train"][b"fine_labels"]
    assert bundle.test.classes[42] == "c42"
    image, label = bundle.test[0]
    assert label == batches["test"][b"fine_labels"][0]
    assert float(image[1, 8, 9]) == pytest.approx(expected_pixel(batches["test"], 0, 1, 8, 9, "cifar100"), abs=1e-5)


def test_cifar_dataset_pickles_for_spawned_workers(tmp_path):
    make_cifar10(tmp_path)
    ds = load_data(f"cifar10:{tmp_path}", augment=False).test
    clone = pickle.loads(pickle.dumps(ds))
    assert type(clone) is type(ds) and torch.equal(clone[2][0], ds[2][0]) and clone[2][1] == ds[2][1]


@pytest.mark.parametrize("missing", ["data_batch_1", "test_batch", "batches.meta"])
def test_cifar_missing_file_names_path_and_download(tmp_path, missing):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / missing).unlink()
    with pytest.raises(UsageError) as info:
        load_data(f"cifar10:{tmp_path}")
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py" / missing) in msg and "--download" in msg
    assert "cifar-10-batches-py" in msg


def test_cifar_missing_dir(tmp_path):
    with pytest.raises(UsageError, match="cifar-100-python/train not found.*--download"):
        load_data(f"cifar100:{tmp_path / 'nowhere'}")


def test_cifar_download_failure_is_a_usage_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise URLError("network disabled in tests")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(UsageError, match="cifar10: cannot download into .*network disabled"):
        load_data(f"cifar10:{tmp_path}", download=True)


def test_cifar_malformed_batch(tmp_path):
    make_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((2, 100), np.uint8)})
    with pytest.raises(UsageError, match="test_batch is not a cifar10 batch"):
        load_data(f"cifar10:{tmp_path}")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="not a CIFAR python batch"):
        load_data(f"cifar10:{tmp_path}")


class Planted:
    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_cifar_batch_cannot_run_code(tmp_path):
    make_cifar10(tmp_path)
    planted = Planted()
    planted.target = str(tmp_path / "pwned")
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"data": planted, b"labels": []})
    with pytest.raises(UsageError, match="refusing"):
        load_data(f"cifar10:{tmp_path}")
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------ image folders


def write_image(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 128)).save(path)


def test_imagenet_class_folders(tmp_path):
    for split in ("train", "val"):
        for k, wnid in enumerate(["n02", "n01"]):
            for j in range(2):
                write_image(tmp_path / split / wnid / f"{split}_{j}.JPEG", (80, 70), 40 * k + j)
    bundle = load_data(f"imagenet:{tmp_path}")
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("imagenet", 2, (3, 224, 224))
    assert (bundle.mean, bundle.std) == (data.IMAGENET_MEAN, data.IMAGENET_STD)
    assert (len(bundle.train), len(bundle.test)) == (4, 4)
    assert bundle.train.classes == ["n01", "n02"]
    image, label = bundle.test[0]
    assert image.shape == (3, 224, 224) and label == 0
    assert bundle.train[0][0].shape == (3, 224, 224)
    # a uniform colour survives Resize + CenterCrop: red channel value 40 -> (40/255 - mean) / std
    assert float(image[0].mean()) == pytest.approx((40 / 255 - 0.485) / 0.229, abs=0.05)


@pytest.mark.parametrize("labels_file", ["val_labels.txt", "LOC_val_solution.csv"])
def test_imagenet_flat_validation(tmp_path, labels_file):
    for wnid in ("n03", "n01"):
        write_image(tmp_path / "train" / wnid / "a.JPEG", (100, 100), 10)
    wnids = {"ILSVRC2012_val_00000001.JPEG": "n03", "ILSVRC2012_val_00000002.JPEG": "n01"}
    for name in wnids:
        write_image(tmp_path / "val" / name, (100, 90), 200)
    if labels_file == "val_labels.txt":
        text = "".join(f"{name} {wnid}\n" for name, wnid in wnids.items())
    else:
        text = "ImageId,PredictionString\n" + "".join(
            f"{Path(name).stem},{wnid} 1 2 30 40 {wnid} 5 6 70 80\n" for name, wnid in wnids.items()
        )
    (tmp_path / labels_file).write_text(text)
    bundle = load_data(f"imagenet:{tmp_path}")
    assert bundle.num_classes == 2 and len(bundle.test) == 2
    assert [label for _, label in bundle.test.samples] == [1, 0]  # n03 -> 1, n01 -> 0
    assert bundle.test[0][0].shape == (3, 224, 224)


def test_imagenet_validation_only(tmp_path):
    write_image(tmp_path / "val" / "x.JPEG", (30, 30), 1)
    write_image(tmp_path / "val" / "y.JPEG", (30, 30), 2)
    (tmp_path / "val_labels.txt").write_text("x.JPEG n09\ny.JPEG n05\n")
    bundle = load_data(f"imagenet:{tmp_path}")
    assert len(bundle.train) == 0 and bundle.test.classes == ["n05", "n09"] and bundle.test.targets == [1, 0]
    assert bundle.input_shape == (3, 224, 224)  # ImageNet is always evaluated at 224


def test_imagenet_errors(tmp_path):
    with pytest.raises(UsageError, match="is not a directory.*DIR/train"):
        load_data(f"imagenet:{tmp_path / 'missing'}")
    with pytest.raises(UsageError, match="no labelled images"):
        load_data(f"imagenet:{tmp_path}")
    write_image(tmp_path / "val" / "x.JPEG", (30, 30), 1)
    with pytest.raises(UsageError, match="val_labels.txt"):
        load_data(f"imagenet:{tmp_path}")
    (tmp_path / "val_labels.txt").write_text("other.JPEG n01\n")
    with pytest.raises(UsageError, match="no label for .*x.JPEG"):
        load_data(f"imagenet:{tmp_path}")
    (tmp_path / "val_labels.txt").write_text("x.JPEG\n")
    with pytest.raises(UsageError, match="val_labels.txt:1"):
        load_data(f"imagenet:{tmp_path}")
    (tmp_path / "val_labels.txt").write_text("x.JPEG n07\n")
    write_image(tmp_path / "train" / "n01" / "a.JPEG", (30, 30), 1)
    with pytest.raises(UsageError, match="'n07'.*no training folder"):
        load_data(f"imagenet:{tmp_path}")


@pytest.mark.parametrize("second", ["val", "test"])
def test_folder_train_val_small_images_keep_resolution(tmp_path, second):
    for split in ("train", second):
        for cls in ("cat", "dog", "emu"):
            write_image(tmp_path / split / cls / f"{split}.png", (24, 16), 9)
    write_image(tmp_path / "train" / "cat" / "z_big.png", (40, 30), 9)  # resized to the first image's size
    bundle = load_data(f"folder:{tmp_path}")
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("folder", 3, (3, 16, 24))
    assert (len(bundle.train), len(bundle.test)) == (4, 3)
    assert {tuple(bundle.train[i][0].shape) for i in range(4)} == {(3, 16, 24)}
    assert [bundle.test[i][1] for i in range(3)] == [0, 1, 2]


def test_folder_flat_classes_split_80_20(tmp_path):
    for cls in ("a", "b"):
        for j in range(5):
            write_image(tmp_path / cls / f"{j}.jpg", (100, 120), j)
    bundle = load_data(f"folder:{tmp_path}", augment=False)
    assert bundle.input_shape == (3, 224, 224) and bundle.num_classes == 2
    assert (len(bundle.train), len(bundle.test)) == (8, 2)
    assert sorted(bundle.test.targets) == [0, 1]
    train_paths, test_paths = {p for p, _ in bundle.train.samples}, {p for p, _ in bundle.test.samples}
    assert not train_paths & test_paths and len(train_paths | test_paths) == 10
    again = load_data(f"folder:{tmp_path}", augment=False)
    assert again.test.samples == bundle.test.samples
    assert bundle.train[0][0].shape == (3, 224, 224)


def test_folder_errors(tmp_path):
    with pytest.raises(UsageError, match="is not a directory"):
        load_data(f"folder:{tmp_path / 'nope'}")
    write_image(tmp_path / "train" / "a" / "0.png", (8, 8), 0)
    with pytest.raises(UsageError, match="no sibling"):
        load_data(f"folder:{tmp_path}")
    (tmp_path / "val").mkdir()
    with pytest.raises(UsageError, match="no validation images"):
        load_data(f"folder:{tmp_path}")
    (tmp_path / "val" / "a").mkdir()
    (tmp_path / "val" / "a" / "bad.png").write_bytes(b"not an image")
    (tmp_path / "train" / "a" / "0.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="cannot read image"):
        load_data(f"folder:{tmp_path}")
