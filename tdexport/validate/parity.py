"""Output parity of two models on the same inputs, as numbers: max abs, relative L2, cosine, top-1 agreement.

The comparator is separate from the runners (as in Polygraphy): any two arrays of logits can be compared,
whether they came from torch, ONNX Runtime or TensorRT. All maths is float64 so the comparison itself adds
no rounding of the order of the fp32 differences it measures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .accuracy import infer_batches

__all__ = ["PARITY_KEYS", "ParityResult", "compare_outputs", "compare_runners"]


@dataclass(frozen=True)
class ParityResult:
    """Agreement of candidate logits with reference logits.

    Attributes:
        max_abs_err: max |candidate − reference| over all elements.
        rel_l2_err: ‖candidate − reference‖₂ / ‖reference‖₂ over the whole array (0 when both are zero,
            inf when only the reference is zero; NaN when either contains NaN).
        cosine: the worst (smallest) per-sample cosine similarity of the two logit vectors.
        top1_agreement: fraction (0..1) of samples whose argmax class is the same.
        samples: number of samples N compared.
    """

    max_abs_err: float
    rel_l2_err: float
    cosine: float
    top1_agreement: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the attribute names as keys."""
        return asdict(self)

    def passes(self, max_rel_l2_err: float) -> bool:
        """True when ``rel_l2_err`` ≤ the limit; NaN or inf errors never pass."""
        return bool(np.isfinite(self.rel_l2_err) and self.rel_l2_err <= max_rel_l2_err)

    def summary(self) -> str:
        """One line for messages, e.g. ``rel_l2=3.1e-07 max_abs=2.4e-06 cos=1.000000 top1=100.0% (N=2)``."""
        return (f"rel_l2={self.rel_l2_err:.3g} max_abs={self.max_abs_err:.3g} cos={self.cosine:.6f} "
                f"top1={100 * self.top1_agreement:.1f}% (N={self.samples})")


# The numbers a parity comparison reports, in report order.
PARITY_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ParityResult))


def _as_float64(values: Any, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        raise ValueError(f"{what} must have a batch dimension, got a scalar")
    # One sample of logits (C,) is treated as a batch of one; extra dims are flattened per sample.
    return array.reshape(1, -1) if array.ndim == 1 else array.reshape(array.shape[0], -1)


def compare_outputs(reference: Any, candidate: Any) -> ParityResult:
    """Compare candidate logits with reference logits.

    Args:
        reference: (N, classes) logits of the trusted model, a numpy array or torch tensor (any float dtype);
            (classes,) is read as N = 1 and trailing dims beyond the first are flattened per sample.
        candidate: logits of the model under test, the same shape as ``reference``.

    Returns:
        `ParityResult` computed in float64.

    Raises:
        ValueError: the shapes differ or the arrays are empty.
    """
    ref, cand = _as_float64(reference, "reference"), _as_float64(candidate, "candidate")
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, candidate {cand.shape}")
    if ref.size == 0:
        raise ValueError("cannot compare empty outputs")
    diff = cand - ref
    diff_norm, ref_norm = float(np.linalg.norm(diff)), float(np.linalg.norm(ref))
    if ref_norm > 0 or np.isnan(ref_norm):
        rel = diff_norm / ref_norm
    else:
        rel = 0.0 if diff_norm == 0 else float("inf")
    row_ref, row_cand = np.linalg.norm(ref, axis=1), np.linalg.norm(cand, axis=1)
    dots = np.einsum("ij,ij->i", ref, cand)
    denom = row_ref * row_cand
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, dots / np.where(denom > 0, denom, 1.0), 0.0)
    # Two all-zero rows are identical; one zero row against a non-zero one shares no direction (0).
    cos = np.where((row_ref == 0) & (row_cand == 0), 1.0, cos)
    cos = np.where(np.isnan(dots), np.nan, cos)
    agree = np.argmax(ref, axis=1) == np.argmax(cand, axis=1)
    return ParityResult(
        max_abs_err=float(np.max(np.abs(diff))),
        rel_l2_err=float(rel),
        cosine=float(np.min(cos)),
        top1_agreement=float(np.mean(agree)),
        samples=int(ref.shape[0]),
    )


def compare_runners(reference: Any, candidate: Any, inputs: Any) -> ParityResult:
    """Run two loaded runners on the same inputs and compare their logits.

    Typical use: ``reference`` a `tdexport.runtime.TorchRunner` (PyTorch fp32 eager) and ``candidate`` the
    same model on another backend. Runners with a ``fixed_batch`` get the inputs split and zero-padded to
    it (see `tdexport.validate.accuracy.infer_batches`), so any number of inputs works.

    Args:
        reference: loaded runner of the trusted side; ``infer((N, C, H, W) float32) -> (N, K)``.
        candidate: loaded runner under test, same interface.
        inputs: images, shape (N, C, H, W), numpy array or torch tensor (converted to float32).

    Returns:
        `ParityResult` of candidate vs reference over the N inputs.

    Raises:
        ValueError: the two runners return logits of different shapes, or there are no inputs.
    """
    if hasattr(inputs, "detach"):
        inputs = inputs.detach().cpu().numpy()
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"parity inputs must have shape (N, C, H, W) with N >= 1, got {tuple(x.shape)}")
    return compare_outputs(infer_batches(reference, x), infer_batches(candidate, x))
