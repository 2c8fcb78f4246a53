"""Small ONNX graphs of one layer: the dense layer or its factor chain, built directly with `onnx.helper`.

Exporting through torch costs about a second per graph; a profile needs hundreds, so the nodes are
written here instead: one ``Conv`` per Conv2d (kernel, strides, pads, dilations, group as in torch), one
``Gemm`` per Linear of a classifier (tokens = 1) or ``MatMul`` + ``Add`` when a Linear sees several rows
per sample. The chain comes from `tdexport.layers.structure_for`, the one source of truth for chain
shapes, applied to a meta-device layer of the geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..layers import conv_output_hw, int_padding, structure_for
from .geometry import Geometry
from .target import _RUNNER_SETTINGS

__all__ = ["DENSE", "chain_modules", "modules_onnx", "layer_onnx"]

DENSE = "dense"
_OPSET = _RUNNER_SETTINGS["onnx_opset"]
# onnx's default IR version follows the newest onnx release, which onnxruntime may not read yet.
_IR_VERSION = 8


def chain_modules(geometry: Geometry, method: str, ranks: Sequence[int] = ()) -> list[nn.Module]:
    """The layers timed for ``method`` at ``ranks``, on the meta device (shapes only, no weights).

    Args:
        geometry: the layer.
        method: ``dense`` (the layer itself) or a `tdexport.layers.structure_for` method (``tucker2``, ``tt``,
            ``cp``, ``svd``).
        ranks: the method's ranks ((R_out, R_in) for Tucker-2 / TT, (R,) for CP and SVD); ignored for dense.

    Raises:
        ValueError: unknown method.
    """
    layer = geometry.dummy()
    if method == DENSE:
        return [layer]
    # Without the device context the factor modules would allocate and initialise real weights: the
    # planner prices thousands of rank options this way, and CPU initialisation took seconds of it.
    with torch.device("meta"):
        return list(structure_for(method, layer, ranks))


def _weight(param: nn.Parameter, rng: np.random.Generator, scale: float) -> np.ndarray:
    if param.device.type == "meta":
        # Scaled like a trained layer's weights: unit-scale activations keep every value far from denormals.
        return (rng.standard_normal(tuple(param.shape)) * scale).astype(np.float32)
    return param.detach().to("cpu").float().numpy().astype(np.float32, copy=False)


def modules_onnx(modules: Sequence[nn.Module], geometry: Geometry, batch: int, *, seed: int = 0) -> bytes:
    """Serialized ONNX model running ``modules`` in order on one input of ``geometry`` at ``batch``.

    Weights and biases are the modules' own, or seeded random fp32 values for parameters on the meta
    device. The graph has one input ``input`` of shape `Geometry.input_shape` (fixed batch) and one output
    ``output``.

    Args:
        modules: Conv2d (integer or ``'same'``/``'valid'`` padding with a symmetric form) and Linear layers.
        geometry: geometry of the first layer's input (its ``in_hw`` / ``tokens``).
        batch: the fixed batch dimension N.
        seed: seed of the random weights.

    Raises:
        ValueError: a module that is neither Conv2d nor Linear, or padding without a symmetric form.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "input"
    hw = geometry.in_hw
    for i, m in enumerate(modules):
        out = "output" if i == len(modules) - 1 else f"h{i}"
        w_name, b_name = f"w{i}", f"b{i}"
        if isinstance(m, nn.Conv2d):
            padding = int_padding(m)
            if padding is None or hw is None:
                raise ValueError(f"conv {i} of the chain has no symmetric integer padding or no input size")
            kh, kw = m.kernel_size
            w = _weight(m.weight, rng, ((m.in_channels // m.groups) * kh * kw) ** -0.5)
            inits.append(numpy_helper.from_array(w, w_name))
            inputs = [current, w_name]
            if m.bias is not None:
                inits.append(numpy_helper.from_array(_weight(m.bias, rng, 0.1), b_name))
                inputs.append(b_name)
            nodes.append(helper.make_node(
                "Conv", inputs, [out], kernel_shape=[kh, kw], strides=list(m.stride),
                pads=[padding[0], padding[1], padding[0], padding[1]], dilations=list(m.dilation), group=m.groups))
            hw = conv_output_hw(m, hw)
        elif isinstance(m, nn.Linear):
            w = _weight(m.weight, rng, m.in_features ** -0.5)  # (O, I)
            bias = None if m.bias is None else _weight(m.bias, rng, 0.1)
            if geometry.tokens == 1:
                inits.append(numpy_helper.from_array(w, w_name))
                inputs = [current, w_name]
                if bias is not None:
                    inits.append(numpy_helper.from_array(bias, b_name))
                    inputs.append(b_name)
                nodes.append(helper.make_node("Gemm", inputs, [out], transB=1))
            else:
                inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), w_name))
                if bias is None:
                    nodes.append(helper.make_node("MatMul", [current, w_name], [out]))
                else:
                    inits.append(numpy_helper.from_array(bias, b_name))
                    nodes.append(helper.make_node("MatMul", [current, w_name], [f"{out}_mm"]))
                    nodes.append(helper.make_node("Add", [f"{out}_mm", b_name], [out]))
        else:
            raise ValueError(f"layer graphs hold Conv2d and Linear, not {type(m).__name__}")
        current = out
    last = modules[-1]
    out_ch = last.out_channels if isinstance(last, nn.Conv2d) else last.out_features
    if geometry.kind == "conv":
        out_shape = [batch, out_ch, *hw]
    else:
        out_shape = [batch, out_ch] if geometry.tokens == 1 else [batch, geometry.tokens, out_ch]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(geometry.input_shape(batch)))
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, "layer", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=_IR_VERSION,
                              producer_name="tdexport.cost")
    return model.SerializeToString()


def layer_onnx(geometry: Geometry, method: str, ranks: Sequence[int], batch: int, *,
               chain: Sequence[nn.Module] | None = None, seed: int = 0) -> bytes:
    """ONNX model of the dense layer (``method="dense"``) or its ``method`` chain at ``ranks``.

    Args:
        geometry: the layer.
        method: ``dense``, ``tucker2``, ``tt``, ``cp`` or ``svd``.
        ranks: ranks of the chain (ignored for dense).
        batch: fixed batch N of the graph's input.
        chain: layers whose weights to use (e.g. a factorized ``nn.Sequential``); None builds the
            structure with `chain_modules` and random weights.
        seed: seed of random weights.

    Returns:
        The serialized model: input ``input`` `Geometry.input_shape(batch)`, output ``output``.
    """
    modules = list(chain) if chain is not None else chain_modules(geometry, method, ranks)
    return modules_onnx(modules, geometry, batch, seed=seed)
