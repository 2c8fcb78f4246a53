"""Attention with visible projections: ``nn.MultiheadAttention`` rewritten around two plain ``nn.Linear``.

Why: ``nn.MultiheadAttention`` (torchvision's ViT, ``nn.Transformer*``) keeps its q/k/v projection as a bare
``in_proj_weight`` Parameter and hands it, together with ``out_proj.weight`` (``out_proj`` is a
``NonDynamicallyQuantizableLinear`` that is never *called*), to ``F.multi_head_attention_forward`` or a fused
kernel. Forward hooks on ``nn.Linear`` therefore never fire for those projections, so the planner neither sees
their inputs nor can swap them for a factor chain: in ViT-B/16 they are a third of the encoder's weights.

Layout of `ExplicitMultiheadAttention` (E = embed_dim, H = num_heads, D = E / H, N batch, L target and S source
sequence length):

* ``in_proj``: ``nn.Linear(E, 3E)`` whose weight is ``in_proj_weight`` unchanged, rows ``[0, E)`` the query,
  ``[E, 2E)`` the key and ``[2E, 3E)`` the value projection (MHA's packing order), bias ``in_proj_bias``.
* ``out_proj``: ``nn.Linear(E, E)`` with ``out_proj``'s weight and bias.

Both are exact ``nn.Linear`` and are called as modules, so hooks see them and either may later be replaced by any
module with the same input/output widths (a factor chain); the forward only ever calls them.

Equivalence: the forward is the computation of ``F.multi_head_attention_forward`` for the configurations it
accepts (packed equal-width projections, no ``bias_k``/``bias_v``, no zero-attention row), written with matmul,
softmax, reshape, transpose, add and mul (plus a Where when a boolean mask is given) so it exports to standard
ONNX ops: q = x Wq + bq, k, v alike; per head softmax(q kᵀ / √D + mask) v; heads concatenated; ``out_proj``.
Boolean masks mean "True = not allowed" and become −inf, float masks are added, ``key_padding_mask`` is added per
key for every head and query — torch's semantics. Results agree with torch to float rounding (float32: ~1e-6).
Two differences in edge cases only: a query row whose keys are *all* masked gives NaN here (as torch's weights
path and fused fast path do; torch's SDPA path gives zeros there), and ``is_causal`` is, as torch documents it, a
hint that ``attn_mask`` is causal — torch requires ``attn_mask`` with it and this module always applies that mask.

When ``query is key is value`` (self-attention, the ViT case) ``in_proj`` runs once and its output is split.
Otherwise it runs on each distinct input (once on ``key`` when ``key is value``) and the needed third is kept: the
same numbers at up to three times the projection cost, the price of keeping one packed Linear.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ExplicitMultiheadAttention", "explicit_attention", "unsupported_attention", "with_explicit_attention"]


def _unsupported_reason(mha: nn.Module) -> str | None:
    """Why ``mha`` cannot become an `ExplicitMultiheadAttention`, or None when it can."""
    if type(mha) is not nn.MultiheadAttention:
        return (f"{type(mha).__module__}.{type(mha).__qualname__} subclasses nn.MultiheadAttention and may compute "
                "something else; only nn.MultiheadAttention itself is rewritten")
    if not mha._qkv_same_embed_dim:
        return (f"kdim={mha.kdim} / vdim={mha.vdim} differ from embed_dim={mha.embed_dim}: q, k and v have separate "
                "projections of different input widths, which one packed nn.Linear(E, 3E) cannot hold")
    if mha.bias_k is not None or mha.bias_v is not None:
        return ("add_bias_kv=True: learned bias_k / bias_v rows are appended to every key and value sequence, "
                "which is a concatenation, not part of a Linear projection")
    if mha.add_zero_attn:
        return "add_zero_attn=True: a zero key and value row is appended to every sequence, which is not represented"
    return None


def _additive(mask: Tensor | None, name: str, dtype: torch.dtype) -> Tensor | None:
    """``mask`` as an additive float mask: bool True → −inf (not allowed), False → 0; float masks unchanged."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(f"{name} must be bool or floating point, got {mask.dtype}")
    return mask


def _check_shapes(key: Tensor, value: Tensor, attn_mask: Tensor | None, key_padding_mask: Tensor | None,
                  nh: int, tgt_len: int, src_len: int) -> None:
    """Refuse inputs torch's MHA refuses: key/value (N, S, E) alike, masks (L, S) or (N·H, L, S), and (N, S)."""
    if key.shape != value.shape:
        raise ValueError(f"key shape {tuple(key.shape)} does not match value shape {tuple(value.shape)}")
    if attn_mask is not None and tuple(attn_mask.shape) not in ((tgt_len, src_len), (nh, tgt_len, src_len)):
        raise RuntimeError(f"attn_mask shape {tuple(attn_mask.shape)} is neither (L, S) = {(tgt_len, src_len)} "
                           f"nor (N*H, L, S) = {(nh, tgt_len, src_len)}")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (key.shape[0], src_len):
        raise RuntimeError(f"key_padding_mask shape {tuple(key_padding_mask.shape)} is not (N, S) = "
                           f"{(key.shape[0], src_len)}")


class ExplicitMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with its projections as two called ``nn.Linear`` modules (see module docstring).

    Build it from an existing module with `from_mha` (weights copied) or directly (weights initialised like
    ``nn.Linear``). Forward signature and returns are those of ``nn.MultiheadAttention``.

    Attributes:
        in_proj: ``nn.Linear(E, 3E)``; output columns [q | k | v], each E wide.
        out_proj: ``nn.Linear(E, E)``.
        embed_dim: E. num_heads: H. head_dim: D = E / H.
        dropout: probability of zeroing an attention weight in training mode.
        batch_first: inputs/outputs are (N, L, E) when True, (L, N, E) when False.
        in_proj_weight, in_proj_bias: always None. torch's ``TransformerEncoderLayer`` / ``TransformerEncoder``
            read these to feed a fused kernel that would bypass ``in_proj``; None sends them down their ordinary
            path, which calls this module.
        kdim, vdim, bias_k, bias_v, add_zero_attn, _qkv_same_embed_dim: the fixed values of the only MHA
            configuration represented (E, E, None, None, False, True), for code that inspects them.
    """

    in_proj_weight = None
    in_proj_bias = None
    bias_k = None
    bias_v = None
    add_zero_attn = False
    _qkv_same_embed_dim = True

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.kdim = self.vdim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.batch_first = batch_first
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias, device=device, dtype=dtype)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> ExplicitMultiheadAttention:
        """An equivalent module holding copies of ``mha``'s weights, on its device and dtype and in its train mode.

        Each bias is present iff ``mha`` has it; ``requires_grad`` of every copied parameter follows the source.

        Raises:
            ValueError: ``mha`` cannot be represented (kdim/vdim ≠ embed_dim, add_bias_kv, add_zero_attn, or a
                subclass of nn.MultiheadAttention); the message says which.
        """
        reason = _unsupported_reason(mha)
        if reason is not None:
            raise ValueError(f"cannot rewrite this MultiheadAttention: {reason}")
        w = mha.in_proj_weight
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, batch_first=mha.batch_first, device=w.device,
                  dtype=w.dtype)
        pairs = ((new.in_proj, mha.in_proj_weight, mha.in_proj_bias),
                 (new.out_proj, mha.out_proj.weight, mha.out_proj.bias))
        with torch.no_grad():
            for lin, weight, bias in pairs:
                lin.weight.copy_(weight)
                lin.weight.requires_grad_(weight.requires_grad)
                if bias is None:
                    lin.bias = None
                else:
                    lin.bias.copy_(bias)
                    lin.bias.requires_grad_(bias.requires_grad)
        return new.train(mha.training)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Checkpoints of the nn.MultiheadAttention this replaces name the packed projection in_proj_weight /
        # in_proj_bias; accept them so a model rewritten before loading its weights still loads them.
        for old, new in (("in_proj_weight", "in_proj.weight"), ("in_proj_bias", "in_proj.bias")):
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v, each (N, L or S, E), from batch-first inputs; ``in_proj`` runs once per distinct input."""
        e = self.embed_dim
        # Slices, not split(): torch 2.14's dynamo exporter writes Split with opset-18 attributes into opset-17
        # files, which the ONNX checker rejects; Slice is the same in every opset.
        if query is key and key is value:
            qkv = self.in_proj(query)
            return qkv[..., :e], qkv[..., e:2 * e], qkv[..., 2 * e:]
        q = self.in_proj(query)[..., :e]
        if key is value:
            kv = self.in_proj(key)
            k, v = kv[..., e:2 * e], kv[..., 2 * e:]
        else:
            k = self.in_proj(key)[..., e:2 * e]
            v = self.in_proj(value)[..., 2 * e:]
        return q, k, v

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """Multi-head attention of ``query`` over ``key``/``value``, as ``nn.MultiheadAttention.forward``.

        Args:
            query: (N, L, E) if batch_first else (L, N, E); (L, E) unbatched.
            key: (N, S, E) if batch_first else (S, N, E); (S, E) unbatched.
            value: shaped like ``key``.
            key_padding_mask: (N, S) ((S,) unbatched); bool True = ignore that key, float = added to its scores.
            need_weights: also return the attention weights.
            attn_mask: (L, S) or (N·H, L, S); bool True = not allowed, float = added to the scores.
            average_attn_weights: return weights averaged over heads instead of per head.
            is_causal: hint that ``attn_mask`` is the causal mask; ``attn_mask`` is required with it and applied.

        Returns:
            (output, weights): output shaped like ``query``; weights (N, L, S) averaged or (N, H, L, S) per head
            ((L, S) / (H, L, S) unbatched) after dropout, or None when ``need_weights`` is False.
        """
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal=True needs attn_mask (it is a hint that attn_mask is the causal mask); "
                               "nn.Transformer.generate_square_subsequent_mask builds one")
        batched = query.dim() == 3
        if not batched and query.dim() != 2:
            raise ValueError(f"query must be (L, E) or 3-D batched, got shape {tuple(query.shape)}")
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"query, key and value must all be batched or all unbatched, got {query.dim()}-D, "
                             f"{key.dim()}-D and {value.dim()}-D")
        # Work batch-first; `is` identity decides the projection sharing, so it is kept through the reshapes.
        if not batched:
            q_in, k_in, v_in = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            q_in, k_in, v_in = query, key, value
        else:
            q_in, k_in, v_in = (t.transpose(0, 1) for t in (query, key, value))
        if query is key:
            k_in = q_in
        if key is value:
            v_in = k_in
        n, tgt_len, _ = q_in.shape
        src_len = k_in.shape[1]
        h, d = self.num_heads, self.head_dim
        if not torch.jit.is_tracing():  # sizes are traced values there; comparing them would freeze the graph
            _check_shapes(k_in, v_in, attn_mask, key_padding_mask, n * h, tgt_len, src_len)

        q, k, v = self._project(q_in, k_in, v_in)
        q = q.reshape(n, tgt_len, h, d).transpose(1, 2)  # (N, H, L, D)
        k = k.reshape(n, src_len, h, d).transpose(1, 2)  # (N, H, S, D)
        v = v.reshape(n, src_len, h, d).transpose(1, 2)
        scores = (q * math.sqrt(1.0 / d)) @ k.transpose(-2, -1)  # (N, H, L, S)

        mask = _additive(attn_mask, "attn_mask", q.dtype)
        if mask is not None:
            # (L, S) broadcasts over (N, H); (N·H, L, S) is batch-major, head-minor like torch's layout.
            scores = scores + (mask.reshape(n, h, tgt_len, src_len) if mask.dim() == 3 else mask)
        padding = _additive(key_padding_mask, "key_padding_mask", q.dtype)
        if padding is not None:
            scores = scores + padding.reshape(n, 1, 1, src_len)

        weights = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = (weights @ v).transpose(1, 2).reshape(n, tgt_len, self.embed_dim)  # heads concatenated
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)

        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights if batched else weights.squeeze(0)

    def extra_repr(self) -> str:
        """Heads, dropout and layout, next to the two Linear children."""
        return f"num_heads={self.num_heads}, dropout={self.dropout}, batch_first={self.batch_first}"


def _mha_entries(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(dotted name, module) for every registration of an nn.MultiheadAttention (or subclass) in ``model``."""
    return [(name, m) for name, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, nn.MultiheadAttention)]


def unsupported_attention(model: nn.Module) -> dict[str, str]:
    """Every registered name of an ``nn.MultiheadAttention`` in ``model`` that `explicit_attention` leaves alone.

    Returns:
        {dotted name: reason}; the root module itself is reported under ``""`` (it cannot be replaced in place:
        use `ExplicitMultiheadAttention.from_mha`). Empty when every MHA can be rewritten (or there is none).
    """
    out = {}
    for name, m in _mha_entries(model):
        if name == "":
            out[name] = "the model itself is an nn.MultiheadAttention; use ExplicitMultiheadAttention.from_mha"
        elif (reason := _unsupported_reason(m)) is not None:
            out[name] = reason
    return out


def explicit_attention(model: nn.Module) -> list[str]:
    """Replace, in place, every representable ``nn.MultiheadAttention`` in ``model`` by its explicit equivalent.

    Each becomes an `ExplicitMultiheadAttention` with copied weights on the same device and dtype and in the
    same train/eval mode. A module registered under several names is replaced by one shared new module under all
    of them. MHAs that cannot be represented stay as they are (`unsupported_attention` says why). An
    ``nn.TransformerEncoder`` whose layers now hold the new module gets ``use_nested_tensor = False``: its
    nested-tensor path requires the fused layer kernel that reads ``in_proj_weight``, and its own constructor
    makes the same choice for such a layer (outputs at non-padded positions are unchanged; padded positions are
    no longer zero-filled). Forward hooks registered on a replaced MHA itself are not carried over. Re-create
    optimizers afterwards: the parameters are new tensors.

    Returns:
        Dotted names replaced, in ``named_modules`` order; empty when there was nothing to replace (so a second
        call returns ``[]``).
    """
    new_of: dict[int, nn.Module] = {}
    replaced = []
    for name, mha in _mha_entries(model):
        if name == "" or _unsupported_reason(mha) is not None:
            continue
        if id(mha) not in new_of:
            new_of[id(mha)] = ExplicitMultiheadAttention.from_mha(mha)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new_of[id(mha)])
        replaced.append(name)
    if replaced:
        for m in model.modules():
            if isinstance(m, nn.TransformerEncoder) and any(
                    isinstance(getattr(layer, "self_attn", None), ExplicitMultiheadAttention) for layer in m.layers):
                m.use_nested_tensor = False
    return replaced


def with_explicit_attention(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``model`` whose ``nn.MultiheadAttention`` blocks call their projections as modules.

    MultiheadAttention runs its q/k/v and output projections functionally, so no forward hook sees them and
    they would be missing from the plan; `tdexport.attention.explicit_attention` swaps in an equivalent
    module with ``in_proj`` / ``out_proj`` Linears (same outputs, same parameters). Blocks it cannot
    represent are returned by name with the reason, recorded in the plan as kept.
    """
    if not any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return model, {}
    model = copy.deepcopy(model)
    explicit_attention(model)
    return model, {f"{name}.out_proj": f"kept: {why}" for name, why in unsupported_attention(model).items()}
