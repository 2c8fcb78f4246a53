"""--format ht2 end to end: ranks from every rule kind, exact at full rank, reload, ONNX parity, ADMM, plan checks."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import tdexport
from tdexport.errors import UsageError
from tdexport.layers import chain_cost
from tdexport.plan import Plan
from tdexport.train.admm import project


def _resnet20():
    torch.manual_seed(0)
    return tdexport.create_model("resnet20", weights="random", num_classes=10)


def test_full_rank_ht2_chain_reproduces_the_conv():
    from tdexport.factorize import _decompose, _Spectra

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1)
    full = [16, min(16 * 3, 24 * 3), 24]
    seq, err = _decompose("ht2", conv, full, _Spectra(conv.weight.detach()), iters=0, cp_iters=0)
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        ref = conv(x)
        assert torch.linalg.norm(seq(x) - ref) / torch.linalg.norm(ref) < 1e-5 and err < 1e-5


def test_ht2_model_reloads_exactly(tmp_path):
    c = tdexport.compress("resnet20", format="ht2", rank="ratio:0.5", weights="random")
    kxk = [e for e in c.plan.layers if e.decision == "decomposed" and e.shape[2:] == [3, 3]]
    assert kxk and all(e.method == "ht2" and len(e.ranks) == 3 for e in kxk)
    x = torch.randn(4, 3, 32, 32)
    tdexport.save(tmp_path / "run", c)
    again = tdexport.load(tmp_path / "run").eval()
    with torch.no_grad():
        assert torch.equal(again(x), c.model.eval()(x))


def test_truncated_ht2_counts_and_exports(tmp_path):
    model = _resnet20().eval()
    c = tdexport.compress(model, format="ht2", rank="energy:0.8", input_shape=(3, 32, 32))
    layer = next(e for e in c.plan.layers if e.method == "ht2" and e.decision == "decomposed")
    seq = c.model.get_submodule(layer.name)
    assert [type(m) for m in seq] == [nn.Conv2d] * 4
    assert [m.kernel_size for m in seq] == [(1, 1), (3, 1), (1, 3), (1, 1)]
    params, macs = chain_cost(list(seq), in_hw=tuple(layer.in_hw))
    assert (params, macs) == (layer.params_after, layer.macs_after)
    r1, r13, r3 = layer.ranks
    assert r13 <= min(3 * r1, 3 * r3) and layer.macs_after < layer.macs_before
    from tdexport.export.onnx import export_onnx

    result = export_onnx(c.model, tmp_path / "m.onnx", input_shape=(3, 32, 32), opset=18)
    assert result.parity.rel_l2_err < 1e-4


def test_ht2_rank_rules_and_refusals(tmp_path):
    model = _resnet20()
    for rank in ("vbmf", "ratio:0.5", "8"):
        plan = tdexport.compress(model, format="ht2", rank=rank, input_shape=(3, 32, 32)).plan
        assert any(e.method == "ht2" and e.decision == "decomposed" for e in plan.layers)
    with pytest.raises(UsageError, match="not ht2"):
        tdexport.compress(model, format="ht2", rank="macs:2x", input_shape=(3, 32, 32))
    # An edited plan whose middle rank cannot exist is refused before anything is built.
    plan = tdexport.compress(model, format="ht2", rank="ratio:0.5", input_shape=(3, 32, 32)).plan
    data = plan.to_dict()
    entry = next(e for e in data["layers"] if e["method"] == "ht2" and e["decision"] == "decomposed")
    entry["ranks"][1] = 3 * entry["ranks"][0] + 1
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="middle rank"):
        tdexport.apply_plan(_resnet20(), Plan.read(path))


def test_admm_projects_ht2_like_the_final_decomposition():
    torch.manual_seed(1)
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    assert torch.allclose(project(w, "ht2", [8, 24, 16]), w, atol=1e-10)  # full ranks: exact
    low = project(w, "ht2", [4, 6, 8])
    assert low.shape == w.shape and 0 < torch.linalg.norm(low - w) < torch.linalg.norm(w)


def test_cli_compress_ht2(cli, tmp_path):
    out = tmp_path / "r20"
    assert cli(["compress", "resnet20", "--weights", "random", "--format", "ht2", "--rank", "energy:0.9",
                "--out", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["format"] == "ht2" and any(e["method"] == "ht2" for e in plan["layers"])
