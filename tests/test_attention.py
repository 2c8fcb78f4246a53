"""ExplicitMultiheadAttention equals nn.MultiheadAttention, exposes its projections as nn.Linear, exports to ONNX."""

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tdexport.attention import ExplicitMultiheadAttention, explicit_attention, unsupported_attention

E, H, N, L, S = 16, 4, 3, 5, 7
ATOL = 1e-5


def _close(a, b, atol=ATOL):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()


def _inputs(kind, batch_first, gen):
    """(query, key, value) tensors with the identities of ``kind``; L queries, S keys (L for self-attention)."""

    def t(length):
        shape = (N, length, E) if batch_first else (length, N, E)
        return torch.randn(shape, generator=gen)

    if kind == "self":
        x = t(L)
        return x, x, x
    q, kv = t(L), t(S)
    return (q, kv, kv) if kind == "kv" else (q, kv, t(S))


def _masks(mask, src_len, gen):
    """(attn_mask, key_padding_mask) for a mask case; no query row is fully masked (torch's paths disagree there)."""
    attn = kpm = None
    if mask in ("attn_bool", "both_bool"):
        attn = torch.rand(L, src_len, generator=gen) < 0.4
        attn[:, 0] = False
    if mask in ("attn_float", "both_float"):
        attn = torch.randn(N * H, L, src_len, generator=gen)
    if mask in ("kpm_bool", "both_bool"):
        kpm = torch.zeros(N, src_len, dtype=torch.bool)
        kpm[1, -2:] = True
        kpm[2, 1] = True
    if mask in ("kpm_float", "both_float"):
        kpm = torch.randn(N, src_len, generator=gen)
    return attn, kpm


def _pair(batch_first=True, bias=True, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(E, H, dropout=dropout, bias=bias, batch_first=batch_first)
    if bias:  # MHA initialises its biases to zero, which would hide a misplaced bias
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha.eval(), ExplicitMultiheadAttention.from_mha(mha).eval()


@pytest.mark.parametrize("mask", ["none", "attn_bool", "attn_float", "kpm_bool", "kpm_float", "both_bool",
                                  "both_float"])
@pytest.mark.parametrize("kind", ["self", "kv", "cross"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_matches_torch(batch_first, bias, kind, mask):
    mha, ours = _pair(batch_first, bias)
    gen = torch.Generator().manual_seed(1)
    q, k, v = _inputs(kind, batch_first, gen)
    attn, kpm = _masks(mask, L if kind == "self" else S, gen)
    for need, average in ((False, True), (True, True), (True, False)):
        kwargs = dict(key_padding_mask=kpm, need_weights=need, attn_mask=attn, average_attn_weights=average)
        got = ours(q, k, v, **kwargs)
        # with grad enabled torch takes its F.multi_head_attention_forward path; under no_grad its fused fast path
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                ref = mha(q, k, v, **kwargs)
            _close(got[0], ref[0])
            _close(got[1], ref[1])
        if need:
            src_len = L if kind == "self" else S
            assert got[1].shape == ((N, L, src_len) if average else (N, H, L, src_len))


def test_unbatched_inputs():
    mha, ours = _pair(batch_first=True)
    gen = torch.Generator().manual_seed(2)
    q, kv = torch.randn(L, E, generator=gen), torch.randn(S, E, generator=gen)
    kpm = torch.zeros(S)
    kpm[-1] = float("-inf")
    attn = torch.randn(H, L, S, generator=gen)
    for average in (True, False):
        got = ours(q, kv, kv, key_padding_mask=kpm, attn_mask=attn, average_attn_weights=average)
        ref = mha(q, kv, kv, key_padding_mask=kpm, attn_mask=attn, average_attn_weights=average)
        assert got[0].shape == (L, E)
        _close(got[0], ref[0])
        _close(got[1], ref[1])


def test_is_causal_hint_with_its_mask():
    mha, ours = _pair(batch_first=True)
    x = torch.randn(N, L, E, generator=torch.Generator().manual_seed(3))
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    for need in (False, True):
        got = ours(x, x, x, attn_mask=causal, is_causal=True, need_weights=need)
        ref = mha(x, x, x, attn_mask=causal, is_causal=True, need_weights=need)
        _close(got[0], ref[0])
        _close(got[1], ref[1])
    with pytest.raises(RuntimeError, match="attn_mask"):
        ours(x, x, x, is_causal=True)


def test_train_mode_without_dropout_matches_torch():
    mha, ours = _pair(batch_first=False)
    mha.train()
    ours.train()
    q, k, v = _inputs("cross", False, torch.Generator().manual_seed(4))
    got, ref = ours(q, k, v, average_attn_weights=False), mha(q, k, v, average_attn_weights=False)
    _close(got[0], ref[0])
    _close(got[1], ref[1])


def test_dropout_applies_to_attention_weights_in_training_only():
    _, ours = _pair(dropout=0.5)
    x = torch.randn(N, L, E, generator=torch.Generator().manual_seed(5))
    _, clean = ours(x, x, x, average_attn_weights=False)
    _, clean_again = ours(x, x, x, average_attn_weights=False)
    assert torch.equal(clean, clean_again)
    ours.train()
    torch.manual_seed(0)
    _, dropped = ours(x, x, x, average_attn_weights=False)
    zeroed = dropped == 0
    assert 0 < zeroed.float().mean().item() < 1
    # kept weights are the eval weights scaled by 1 / (1 - p)
    assert torch.allclose(dropped[~zeroed], clean[~zeroed] * 2, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_from_mha_layout_device_dtype_mode(bias):
    mha = nn.MultiheadAttention(E, H, bias=bias, dtype=torch.float64)
    mha.in_proj_weight.requires_grad_(False)
    ours = ExplicitMultiheadAttention.from_mha(mha)
    assert ours.training and type(ours.in_proj) is nn.Linear and type(ours.out_proj) is nn.Linear
    assert (ours.in_proj.in_features, ours.in_proj.out_features) == (E, 3 * E)
    assert (ours.out_proj.in_features, ours.out_proj.out_features) == (E, E)
    assert torch.equal(ours.in_proj.weight, mha.in_proj_weight)
    assert torch.equal(ours.out_proj.weight, mha.out_proj.weight)
    assert ours.in_proj.weight.dtype == torch.float64 and ours.in_proj.weight.device == mha.in_proj_weight.device
    assert not ours.in_proj.weight.requires_grad and ours.out_proj.weight.requires_grad
    assert ours.in_proj.weight.data_ptr() != mha.in_proj_weight.data_ptr()  # a copy
    if bias:
        assert torch.equal(ours.in_proj.bias, mha.in_proj_bias) and torch.equal(ours.out_proj.bias, mha.out_proj.bias)
    else:
        assert ours.in_proj.bias is None and ours.out_proj.bias is None
    assert not ExplicitMultiheadAttention.from_mha(mha.eval()).training


def test_loads_the_replaced_modules_state_dict():
    mha, _ = _pair()
    fresh = ExplicitMultiheadAttention(E, H, batch_first=True).eval()
    fresh.load_state_dict(mha.state_dict())  # strict: in_proj_weight / in_proj_bias map to in_proj.*
    x = torch.randn(N, L, E)
    _close(fresh(x, x, x)[0], mha(x, x, x)[0])


class _SubMHA(nn.MultiheadAttention):
    pass


REFUSED = {
    "kdim": (dict(kdim=8), "kdim=8"),
    "vdim": (dict(vdim=8), "vdim=8"),
    "add_bias_kv": (dict(add_bias_kv=True), "add_bias_kv"),
    "add_zero_attn": (dict(add_zero_attn=True), "add_zero_attn"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refuses_what_it_cannot_represent(case):
    kwargs, why = REFUSED[case]
    mha = nn.MultiheadAttention(E, H, **kwargs)
    with pytest.raises(ValueError, match=why):
        ExplicitMultiheadAttention.from_mha(mha)
    model = nn.Sequential(mha)
    assert explicit_attention(model) == []
    assert model[0] is mha
    assert why in unsupported_attention(model)["0"]


def test_refuses_subclasses():
    with pytest.raises(ValueError, match="subclasses"):
        ExplicitMultiheadAttention.from_mha(_SubMHA(E, H))


def test_explicit_attention_names_sharing_and_leftovers():
    shared = nn.MultiheadAttention(E, H)
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Sequential(nn.Linear(E, E), shared), nn.Sequential(shared)])
    model.cross = nn.ModuleDict({"attn": nn.MultiheadAttention(E, H, batch_first=True).eval()})
    model.odd = nn.MultiheadAttention(E, H, kdim=8)
    replaced = explicit_attention(model)
    assert replaced == ["blocks.0.1", "blocks.1.0", "cross.attn"]
    assert model.blocks[0][1] is model.blocks[1][0]  # still one module, registered twice
    assert isinstance(model.blocks[0][1], ExplicitMultiheadAttention) and model.blocks[0][1].training
    assert isinstance(model.cross["attn"], ExplicitMultiheadAttention) and not model.cross["attn"].training
    assert isinstance(model.odd, nn.MultiheadAttention)
    assert list(unsupported_attention(model)) == ["odd"]
    assert explicit_attention(model) == []
    assert explicit_attention(nn.Linear(2, 2)) == [] and unsupported_attention(nn.Linear(2, 2)) == {}
    assert "" in unsupported_attention(nn.MultiheadAttention(E, H))


def test_torch_transformer_layers_call_the_explicit_module():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.Transformer(E, H, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=32, dropout=0.0,
                           batch_first=True).eval()
    model.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    gen = torch.Generator().manual_seed(6)
    src, tgt = torch.randn(N, S, E, generator=gen), torch.randn(N, L, E, generator=gen)
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[1, -3:] = True
    with torch.no_grad():  # lets torch take its fused / nested-tensor encoder paths for the reference
        ref_mem = model.encoder(src, src_key_padding_mask=kpm)
        ref = model(src, tgt, src_key_padding_mask=kpm, memory_key_padding_mask=kpm)
        assert len(explicit_attention(model)) == 2 + 2
        seen = []
        hooks = [m.register_forward_hook(lambda *_: seen.append(1)) for m in model.modules()
                 if isinstance(m, ExplicitMultiheadAttention)]
        mem = model.encoder(src, src_key_padding_mask=kpm)
        for h in hooks:
            h.remove()
        got = model(src, tgt, src_key_padding_mask=kpm, memory_key_padding_mask=kpm)
    assert len(seen) == 2
    kept = ~kpm  # the nested-tensor path zero-fills padded positions; compare the others
    _close(mem[kept], ref_mem[kept])
    _close(got, ref)


# ---------------------------------------------------------------------------------------------- torchvision ViT


def _linear_calls(model, x):
    """Names of the nn.Linear modules (subclasses included) that run during ``model(x)``."""
    calls = []
    hooks = [m.register_forward_hook(lambda *_, n=name: calls.append(n)) for name, m in model.named_modules()
             if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, calls


@pytest.fixture(scope="module")
def vit():
    """vit_b_16 (random weights, eval) with its attention rewritten; what it computed and called before."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises it: logits would all be 0
    x = torch.randn(1, 3, 224, 224)
    before, calls_before = _linear_calls(model, x)
    replaced = explicit_attention(model)
    return dict(model=model, x=x, before=before, calls_before=calls_before, replaced=replaced)


def test_vit_output_unchanged(vit):
    after, _ = _linear_calls(vit["model"], vit["x"])
    assert (after - vit["before"]).abs().max() <= 1e-5 * vit["before"].abs().max()
    assert vit["before"].abs().max() > 0


def test_vit_projections_visible_to_linear_hooks(vit):
    model = vit["model"]
    assert vit["replaced"] == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in range(12)]
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    _, calls = _linear_calls(model, vit["x"])
    assert len(calls) == len(vit["calls_before"]) + 12 * 2
    for name in vit["replaced"]:
        attn = model.get_submodule(name)
        assert isinstance(attn, ExplicitMultiheadAttention)
        assert type(attn.in_proj) is nn.Linear and type(attn.out_proj) is nn.Linear
        assert calls.count(f"{name}.in_proj") == 1 and calls.count(f"{name}.out_proj") == 1
        assert f"{name}.out_proj" not in vit["calls_before"]  # torch never called it as a module


def test_vit_second_call_replaces_nothing(vit):
    assert explicit_attention(vit["model"]) == []
    assert unsupported_attention(vit["model"]) == {}


# ---------------------------------------------------------------------------------------------- ONNX


class _SelfAttention(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class _MaskedCross(nn.Module):
    """Cross-attention with a bool key padding mask input and a bool attn_mask; returns output and weights."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn
        self.register_buffer("causal", torch.ones(L, S, dtype=torch.bool).triu(1))

    def forward(self, q, kv, kpm):
        return self.attn(q, kv, kv, key_padding_mask=kpm, attn_mask=self.causal)


def _export(model, args, exporter):
    """ONNX bytes at opset 17, called the way tdexport.export.onnx calls each of its two exporters."""
    names = [f"in{i}" for i in range(len(args))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(model, args, dynamo=True, verbose=False, opset_version=17, input_names=names,
                                        optimize=True, external_data=False)
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(model, args, buffer, dynamo=False, opset_version=17, input_names=names,
                          do_constant_folding=True)
        return buffer.getvalue()


@pytest.mark.parametrize(("exporter", "case"), [("torchscript", "self"), ("torchscript", "masked_cross"),
                                                ("dynamo", "self")])
def test_onnx_export_standard_ops_and_parity(exporter, case):
    _, attn = _pair(batch_first=True)
    gen = torch.Generator().manual_seed(7)
    if case == "self":
        model, args = _SelfAttention(attn), (torch.randn(2, L, E, generator=gen),)
    else:
        kpm = torch.zeros(2, S, dtype=torch.bool)
        kpm[1, -2:] = True
        model = _MaskedCross(attn)
        args = (torch.randn(2, L, E, generator=gen), torch.randn(2, S, E, generator=gen), kpm)
    data = _export(model, args, exporter)
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", 17)}
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    outs = session.run(None, {f"in{i}": a.numpy() for i, a in enumerate(args)})
    with torch.no_grad():
        ref = model(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert len(outs) == len(ref)
    for got, want in zip(outs, ref, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5)
