"""Checkpoint directories: reload equals in-memory model, no unpickling, atomic, clear errors."""

import json

import pytest
import torch

import tdexport
from tdexport.checkpoint import atomic_dir, load
from tdexport.errors import UsageError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    c = tdexport.compress("resnet20", format="cp", rank="ratio:0.5", weights="random", num_classes=7,
                          cp_iters=10)
    tdexport.save(out, c)
    return out, c


def test_reload_gives_same_outputs(saved):
    out, c = saved
    assert sorted(p.name for p in out.iterdir()) == ["compressed.safetensors", "plan.json"]
    model, plan = load(out)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(x), c.model.eval()(x))
    assert plan == c.plan and plan.num_classes == 7


def test_corrupt_and_missing_files(saved, tmp_path):
    out, _ = saved
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "plan.json").write_text((out / "plan.json").read_text())
    (bad / "compressed.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        load(bad)
    (bad / "compressed.safetensors").unlink()
    with pytest.raises(UsageError, match="weights not found"):
        load(bad)
    with pytest.raises(UsageError, match="not found"):
        load(tmp_path / "nope")


def test_keys_that_do_not_fit(saved, tmp_path):
    out, _ = saved
    other = tmp_path / "other"
    other.mkdir()
    plan = json.loads((out / "plan.json").read_text())
    plan["num_classes"] = 10
    (other / "plan.json").write_text(json.dumps(plan))
    (other / "compressed.safetensors").write_bytes((out / "compressed.safetensors").read_bytes())
    with pytest.raises(UsageError, match=r"does not fit the model: .*fc.weight: expected \(10, 64\), got \(7, 64\)"):
        load(other)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_a_non_empty_target_and_overwrite_replaces_it_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("from an earlier run")
    with pytest.raises(UsageError, match="exists and is not empty; pass --overwrite"), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["stale.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]  # the old file is gone, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"), atomic_dir(tmp_path / "file", overwrite=True):
        pass


def test_outputs_get_the_umask_mode_not_the_temporary_one(tmp_path, saved):
    import os

    from tdexport._io import atomic_write_bytes

    old = os.umask(0o027)
    try:
        out = tmp_path / "ckpt"
        _, c = saved
        tdexport.save(out, c)
        atomic_write_bytes(out / "extra.bin", b"x")
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
        assert out.stat().st_mode & 0o777 == 0o750
    finally:
        os.umask(old)
    assert modes == {"compressed.safetensors": 0o640, "plan.json": 0o640, "extra.bin": 0o640}
