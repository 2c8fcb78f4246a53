"""What compress and load refuse or keep dense, so that no plan silently changes what a model computes.

Layer subclasses and odd paddings are kept with the reason, shared layers are replaced under every name,
globs and weights are checked, and an edited or corrupt plan.json fails naming the layer and the field.
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import tdexport
from tdexport import layers as L
from tdexport.errors import UsageError
from tdexport.factor.tucker import tucker2
from tdexport.plan import Plan


class StdConv2d(nn.Conv2d):
    """Weight-standardised conv (as timm's StdConv2d): the kernel is normalised per filter in forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Net(nn.Module):
    def __init__(self, middle: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.middle = middle
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.middle(torch.relu(self.stem(x)))
        return self.head(x.mean((2, 3)))


def _compress(model, rank="ratio:0.6", **kw):
    return tdexport.compress(model, format="tucker", rank=rank, input_shape=(3, 16, 16), **kw)


def test_conv_subclass_is_kept_and_output_unchanged():
    torch.manual_seed(0)
    model = Net(StdConv2d(32, 32, 3, padding=1)).eval()
    c = _compress(model)
    entry = c.plan.layer("middle")
    assert entry.decision == "kept" and "StdConv2d subclasses nn.Conv2d" in entry.reason
    assert type(c.model.middle) is StdConv2d
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(c.model.eval()(x), model(x))


@pytest.mark.parametrize("padding,kernel,dilation", [("same", 3, 1), ("same", 5, 2), ("valid", 3, 1),
                                                     ("same", 1, 1)])
def test_string_padding_factors_exactly_at_full_rank(padding, kernel, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, kernel, padding=padding, dilation=dilation, bias=True).double()
    x = torch.randn(2, 6, 11, 13, dtype=torch.float64)
    method = "svd" if kernel == 1 else "tucker2"
    if method == "svd":
        seq = L.svd_structure(conv, [6])
        from tdexport.factor.svd import truncated_svd
        L.load_svd(seq, conv, truncated_svd(L.weight_matrix_of(conv.weight), 6))
    else:
        seq = L.load_tucker2(L.tucker2_structure(conv, [8, 6]), conv, tucker2(conv.weight.detach(), (8, 6)))
    with torch.no_grad():
        assert torch.allclose(seq(x), conv(x), rtol=0, atol=1e-10)
    assert L.conv_output_hw(conv, (11, 13)) == tuple(conv(x).shape[-2:])


def test_string_padding_compresses_and_asymmetric_same_is_kept():
    torch.manual_seed(0)
    model = Net(nn.Sequential(nn.Conv2d(32, 32, 3, padding="same"), nn.Conv2d(32, 32, 4, padding="same")))
    c = _compress(model)  # used to raise TypeError (exit 1)
    same3, same4 = c.plan.layer("middle.0"), c.plan.layer("middle.1")
    assert same3.decision == "decomposed" and c.model.middle[0][1].padding == (1, 1)
    assert same4.decision == "kept" and "pads asymmetrically" in same4.reason
    measured = sum(p.numel() for p in c.model.parameters())
    assert c.plan.totals["params_after"] == measured


def test_shared_layer_is_replaced_under_every_name_and_costed_per_call():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(32, 32, 3, padding=1)
            self.b = self.a  # the same module registered twice

        def forward(self, x):
            return self.b(F.avg_pool2d(self.a(x), 2))  # second call at half the resolution

    torch.manual_seed(0)
    c = _compress(Net(Shared()))
    assert isinstance(c.model.middle.a, nn.Sequential) and c.model.middle.b is c.model.middle.a
    entry = c.plan.layer("middle.a")
    assert entry.decision == "decomposed"
    o, i = 32, 32
    assert entry.macs_before == (16 * 16 + 8 * 8) * o * i * 9  # both calls, each at its own resolution
    r_out, r_in = entry.ranks
    per_pixel = i * r_in + r_in * r_out * 9 + r_out * o
    assert entry.macs_after == (16 * 16 + 8 * 8) * per_pixel
    state = c.model.state_dict()
    rebuilt = tdexport.apply_plan(Net(Shared()), c.plan)
    assert rebuilt.middle.b is rebuilt.middle.a and isinstance(rebuilt.middle.b, nn.Sequential)
    rebuilt.load_state_dict(state)
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(rebuilt.eval()(x), c.model.eval()(x))


def test_globs_that_match_nothing_are_refused_with_close_names():
    model = tdexport.create_model("resnet20", weights="random")
    with pytest.raises(UsageError, match=r"--layers 'layer9\.\*' matches no Conv2d / Linear layer; close names"):
        tdexport.compress(model, rank="ratio:0.5", input_shape=(3, 32, 32), layers=["layer9.*"])
    with pytest.raises(UsageError, match=r"--exclude 'no\.such\.layer\*' matches no"):
        tdexport.compress(model, rank="ratio:0.5", input_shape=(3, 32, 32), exclude=["no.such.layer*"])


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    model = tdexport.create_model("resnet20", weights="random")
    with torch.no_grad():
        model.layer2[1].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(UsageError, match=r"tensor 'layer2\.1\.conv1\.weight' has 1 non-finite"):
        tdexport.compress(model, rank="ratio:0.5", input_shape=(3, 32, 32))
    save_file(model.state_dict(), str(tmp_path / "nan.safetensors"))
    with pytest.raises(UsageError, match="non-finite"):
        tdexport.compress("resnet20", rank="ratio:0.5", weights=str(tmp_path / "nan.safetensors"))


# ---------------------------------------------------------------------------------------------- plan.json


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "r20"
    c = tdexport.compress("resnet20", format="tucker", rank="ratio:0.5", weights="random")
    tdexport.save(out, c)
    return out, json.loads((out / "plan.json").read_text())


def _edited(tmp_path, saved, edit):
    src, plan = saved
    data = copy.deepcopy(plan)
    edit(data)
    out = tmp_path / "edited"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps(data))
    (out / "compressed.safetensors").write_bytes((src / "compressed.safetensors").read_bytes())
    return out


def _entry(data, name):
    return next(e for e in data["layers"] if e["name"] == name)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(schema_version=99), r"schema_version 99 is not one this tdexport reads"),
    (lambda d: d.update(schema_version="1"), r"schema_version '1'"),
    (lambda d: _entry(d, "layer2.0.conv1").update(method="svd"),
     r"layer 'layer2\.0\.conv1' field 'method': 'svd' does not apply"),
    (lambda d: _entry(d, "layer2.0.conv1").update(method="magic"), r"layer 'layer2\.0\.conv1' field 'method'"),
    (lambda d: _entry(d, "layer2.0.conv1").update(ranks=[100000, 8]),
     r"layer 'layer2\.0\.conv1' field 'ranks': \[100000, 8\] do not fit"),
    (lambda d: _entry(d, "layer2.0.conv1").update(ranks=[16]), r"layer 'layer2\.0\.conv1' field 'ranks'"),
    (lambda d: _entry(d, "layer2.0.conv1").update(ranks=["16", 8]), r"layer 'layer2\.0\.conv1' field 'ranks'"),
    (lambda d: _entry(d, "layer2.0.conv1").update(ranks=[0, 8]), r"layer 'layer2\.0\.conv1' field 'ranks'"),
    (lambda d: _entry(d, "layer2.0.conv1").update(shape=[32, 16, 5, 5]), r"layer 'layer2\.0\.conv1' field 'shape'"),
    (lambda d: _entry(d, "layer2.0.conv1").update(decision="maybe"), r"field 'decision'"),
    (lambda d: _entry(d, "layer2.0.conv1").update(method=None), r"a decomposed layer needs a 'method'"),
    (lambda d: _entry(d, "layer2.0.conv1").update(colour="red"), r"unknown field\(s\) colour"),
    (lambda d: _entry(d, "layer2.0.conv1").pop("ranks"), r"missing field\(s\) ranks"),
    (lambda d: _entry(d, "layer2.0.conv1").update(name="layer2.0.nope"), r"layer 'layer2\.0\.nope' does not exist"),
    (lambda d: d.update(input_shape=[3, 32]), r"input_shape must be"),
    (lambda d: d["layers"].append(d["layers"][3]), r"appears more than once"),
    (lambda d: d.update(layers={}), r"layers must be a list"),
])
def test_edited_plan_is_refused_naming_layer_and_field(tmp_path, saved, edit, message, cli, capsys):
    out = _edited(tmp_path, saved, edit)
    with pytest.raises(UsageError, match=message):
        tdexport.load(out)
    # the same plan replayed with --rank plan:FILE, and the CLI path: exit 2, one line, no output
    assert cli(["compress", "resnet20", "--weights", "random", "--rank", f"plan:{out / 'plan.json'}",
                "--out", str(tmp_path / "replay"), "-q"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "replay").exists()


def test_non_finite_checkpoint_is_refused(tmp_path, saved):
    src, _ = saved
    out = tmp_path / "nan"
    out.mkdir()
    (out / "plan.json").write_text((src / "plan.json").read_text())
    state = load_file(str(src / "compressed.safetensors"))
    state["fc.bias"][3] = float("inf")
    save_file(state, str(out / "compressed.safetensors"))
    with pytest.raises(UsageError, match=r"tensor 'fc\.bias' has 1 non-finite"):
        tdexport.load(out)


def test_valid_plan_round_trips_through_from_dict(saved):
    _, data = saved
    plan = Plan.from_dict(data)
    assert plan.to_dict() == data
