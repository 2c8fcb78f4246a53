"""Artifacts from ONNX files: exact MAC counts per operator convention, fixed batches, refused bad files."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tdexport.artifacts import onnx_cost
from tdexport.errors import UsageError


def _classifier(*, trans_b: int | None, batch=None, weight=None, op="Gemm", path):
    """(N, 3, 4, 4) → Flatten (N, 48) → Gemm/MatMul with 10 outputs."""
    rng = np.random.default_rng(0)
    if weight is None:
        weight = rng.standard_normal((10, 48) if trans_b else (48, 10)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "W")]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1)]
    if op == "Gemm":
        attrs = {} if trans_b is None else {"transB": trans_b}
        nodes.append(helper.make_node("Gemm", ["flat", "W"], ["logits"], **attrs))
    else:
        nodes.append(helper.make_node("MatMul", ["flat", "W"], ["logits"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                         [batch or "batch", 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch or "batch", 10])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("trans_b", [None, 0, 1])
def test_gemm_macs_follow_transB_and_its_default(tmp_path, trans_b):
    # transB defaults to 0: B is (K, N) and each output sums K = 48 products; with transB=1 B is (N, K).
    shape, params, macs, batch = onnx_cost(_classifier(trans_b=trans_b, path=tmp_path / "m.onnx"))
    assert (shape, params, macs, batch) == ((3, 4, 4), 480, 480, None)


def test_matmul_and_fixed_batch(tmp_path):
    shape, params, macs, batch = onnx_cost(_classifier(trans_b=0, op="MatMul", batch=4, path=tmp_path / "m.onnx"))
    assert (shape, params, macs, batch) == ((3, 4, 4), 480, 480, 4)


def test_non_finite_initializer_is_refused(tmp_path):
    weight = np.ones((48, 10), np.float32)
    weight[5, 2] = np.nan
    with pytest.raises(UsageError, match=r"tensor 'W' has 1 non-finite"):
        onnx_cost(_classifier(trans_b=0, weight=weight, path=tmp_path / "m.onnx"))


def test_not_an_onnx_file(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x00\x01 definitely not protobuf")
    with pytest.raises(UsageError, match="not a readable ONNX model"):
        onnx_cost(tmp_path / "bad.onnx")
