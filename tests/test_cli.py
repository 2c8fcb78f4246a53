"""The CLI end to end: real commands, real files, exit codes, and help for every option."""

import json
import subprocess
import sys

import click
import pytest
import torch

import tdexport
from tdexport.cli import cli, main


def run(args, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_compress_resnet50_tucker_vbmf_end_to_end_and_reload(tmp_path, capsys):
    out = tmp_path / "r50"
    torch.manual_seed(0)
    code, stdout, _ = run(["compress", "resnet50", "--format", "tucker", "--rank", "vbmf", "--weights", "random",
                           "--out", str(out)], capsys)
    assert code == 0
    assert "layer4.2.conv2" in stdout and "MACs" in stdout
    plan = json.loads((out / "plan.json").read_text())
    assert plan["model"] == "resnet50" and plan["format"] == "tucker2" and plan["input_shape"] == [3, 224, 224]
    decomposed = [e for e in plan["layers"] if e["decision"] == "decomposed"]
    assert len(decomposed) >= 40
    assert plan["totals"]["params_after"] < plan["totals"]["params_before"]
    assert plan["totals"]["macs_after"] < plan["totals"]["macs_before"]
    # Reloaded from disk, it computes what the same compression computes in memory: the CLI drew its random
    # weights after manual_seed(0), so compressing in memory after the same seed sees the same dense model.
    model = tdexport.load(out)
    torch.manual_seed(0)
    ref = tdexport.compress("resnet50", format="tucker", rank="vbmf", weights="random")
    assert ref.plan.to_dict() == plan
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = ref.model.eval()(x), model(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.slow
def test_compress_resnet50_cp_ratio_end_to_end(tmp_path, capsys):
    out = tmp_path / "r50cp"
    code, stdout, _ = run(["compress", "resnet50", "--format", "cp", "--rank", "ratio:0.25", "--weights", "random",
                           "--out", str(out), "--quiet"], capsys)
    assert code == 0, stdout
    plan = json.loads((out / "plan.json").read_text())
    cp = [e for e in plan["layers"] if e["method"] == "cp" and e["decision"] == "decomposed"]
    assert len(cp) == 16 and all(e["ranks"] == [e["shape"][0] // 4] for e in cp)
    model = tdexport.load(out)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_reload_matches_in_memory_model(tmp_path):
    c = tdexport.compress("resnet18", format="tucker", rank="ratio:0.5", weights="random", num_classes=10,
                          input_shape=(3, 64, 64))
    tdexport.save(tmp_path / "r18", c)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(tdexport.load(tmp_path / "r18")(x), c.model.eval()(x))


@pytest.mark.parametrize("args,message", [
    (["compress", "resnet5", "--weights", "random"], "did you mean"),
    (["compress", "resnet20", "--rank", "energy:2", "--weights", "random"], "accepted forms"),
    (["compress", "resnet20", "--rank", "64", "--weights", "random"], "above a mode of size 16"),
    (["compress", "resnet20", "--weights", "{tmp}/missing.pth"], "not found"),
    (["compress", "resnet20", "--weights", "{tmp}/corrupt.pth"], "cannot read checkpoint"),
    (["compress", "resnet20", "--weights", "{tmp}/other.safetensors"], "fc.weight"),
    (["compress", "resnet20"], "no published weights"),
    (["inspect", "{tmp}"], "not a tdexport checkpoint"),
    (["compress", "resnet20", "--weights", "random", "--layers", "no.such.layer*"], "matches no Conv2d / Linear"),
    (["compress", "resnet20", "--weights", "random", "--exclude", "layer9.*"], "close names: layer"),
    (["compress", "resnet20", "--weights", "{tmp}/nan.safetensors"], "tensor 'conv1.weight' has 1 non-finite"),
    (["validate", "--original", "{tmp}/bad.onnx", "--compressed", "{tmp}/bad.onnx"], "not a readable ONNX model"),
    (["validate", "--original", "{tmp}/missing.onnx", "--compressed", "resnet20"], "ONNX file not found"),
    (["validate", "--original", "{tmp}", "--compressed", "{tmp}"], "not a tdexport checkpoint"),
    (["validate", "--original", "resnet20", "--compressed", "resnet20", "--batch-sizes", "0"], "positive integers"),
    (["validate", "--original", "resnet20", "--compressed", "resnet20", "--backend", "ort-cpu,ort-cpu"], "twice"),
    (["validate", "--original", "resnet20", "--compressed", "resnet20", "--min-speedup", "nan"], "finite"),
    (["export", "resnet20", "--weights", "random", "--out", "{tmp}/exists.onnx"], "exists; pass --overwrite"),
    (["export", "{tmp}/bad.onnx", "--out", "{tmp}/x.onnx"], "not a readable ONNX model"),
    (["finetune", "{tmp}/missing", "--out", "{tmp}/ft"], "not found"),
    (["models", "nosuch*"], "no model name matches"),
])
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, capsys, args, message):
    from safetensors.torch import save_file

    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint at all")
    (tmp_path / "bad.onnx").write_bytes(b"this is not a protobuf")
    (tmp_path / "exists.onnx").write_bytes(b"keep me")
    nan = tdexport.create_model("resnet20", weights="random").state_dict()
    nan["conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(nan, str(tmp_path / "nan.safetensors"))
    save_file(tdexport.create_model("resnet20", weights="random", num_classes=100).state_dict(),
              str(tmp_path / "other.safetensors"))
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] in ("compress", "validate"):
        args += ["--out", str(out)]
    code, stdout, stderr = run(args, capsys)
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert (tmp_path / "exists.onnx").read_bytes() == b"keep me"
    assert not (tmp_path / "x.onnx").exists()


def test_inspect_saved_dir_and_dense_model(tmp_path, capsys):
    code, _, _ = run(["compress", "resnet20", "--rank", "ratio:0.5", "--weights", "random", "--out",
                      str(tmp_path / "r20"), "-q"], capsys)
    assert code == 0
    code, stdout, _ = run(["inspect", str(tmp_path / "r20")], capsys)
    assert code == 0 and "layer3.2.conv2" in stdout and "decomposed" in stdout and "2.6" in stdout
    code, stdout, _ = run(["inspect", "mobilenet_v2"], capsys)
    assert code == 0 and "depthwise conv" in stdout and "eligible for svd" in stdout
    code, stdout, _ = run(["models", "resnet*"], capsys)
    assert code == 0 and "resnet20" in stdout.split() and "resnet50" in stdout.split()


def test_every_option_has_help():
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help"
        assert command.help, name


def test_console_entry_point_and_module_run():
    res = subprocess.run([sys.executable, "-m", "tdexport", "compress", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--round-to" in res.stdout
    res = subprocess.run([sys.executable, "-m", "tdexport", "compress", "nosuchmodel"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown model" in res.stderr


def test_an_error_raised_in_a_dataloader_worker_prints_its_own_one_line_message():
    from torch.utils.data import DataLoader, Dataset

    from tdexport.errors import UsageError, user_message

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise UsageError("image /data/x.JPEG cannot be decoded")

    with pytest.raises(UsageError) as info:
        list(DataLoader(Broken(), num_workers=1))
    assert str(info.value).startswith("Caught UsageError in DataLoader worker")  # torch's wrapping
    assert user_message(info.value) == "image /data/x.JPEG cannot be decoded"
    assert user_message(UsageError("plain")) == "plain"
