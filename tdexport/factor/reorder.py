"""Tensor reordering + DCT storage compression of a weight (Ulicny, Krylov & Dahyot, ICASSP 2021; seed §2).

For a weight with N elements and g groups (rows):

1. flatten it, pad with zeros to g·n elements where n = ⌈N/g⌉ (so g need not divide N), and view it as
   M (g, n) in row-major order: row j is the j-th contiguous chunk of n elements;
2. order the n columns (g-vectors) by a greedy nearest-neighbour chain (`greedy_order`), so that every row
   varies slowly along the new column order;
3. take the orthonormal DCT-II of every reordered row and keep its lowest t = ⌈ratio·n⌉ frequencies.

Stored: the g×t coefficients and the permutation (n indices of ⌈log₂ n⌉ bits each). Reconstruction zero-pads
the coefficients, inverts the DCT, undoes the permutation and drops the padding. This saves storage only: the
dense kernel is rebuilt and the layer's MACs do not change.

``ratio`` here is the kept fraction of each row's coefficients, in (0, 1]; the seed's compression factor
r_l (t = ⌊n / r_l⌋) corresponds to ratio ≈ 1 / r_l (`progressive_ratio` gives the seed's per-layer rule).

The DCT runs through the FFT in torch (O(n log n) per row); `dct_matrix` is the explicit orthonormal
matrix, used as the definition in tests. scipy is not needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._spectral import relative_error

__all__ = [
    "ReorderFactors",
    "dct",
    "dct_matrix",
    "greedy_order",
    "idct",
    "progressive_ratio",
    "reorder_compress",
    "reorder_reconstruct",
    "storage_ratio",
]

DEFAULT_BLOCK = 1024


def dct_matrix(n: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal DCT-II matrix D (n, n): X = D x, D[k, j] = c_k·cos(π(2j + 1)k / 2n), c_0 = √(1/n), c_k = √(2/n).

    D is orthogonal (D Dᵀ = I), so the inverse transform (the orthonormal DCT-III) is Dᵀ.
    """
    if n < 1:
        raise ValueError(f"a DCT needs length ≥ 1, got {n}")
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


def _half_shift(n: int, sign: float, device) -> Tensor:
    k = torch.arange(n, dtype=torch.float64, device=device)
    return torch.polar(torch.ones_like(k), sign * math.pi * k / (2 * n))


def dct(x: Tensor) -> Tensor:
    """Orthonormal DCT-II along the last axis (equal to ``x @ dct_matrix(n).T``), through one length-n FFT.

    Makhoul's reordering: v = (x_0, x_2, x_4, …, x_5, x_3, x_1) has FFT V with
    Σ_j x_j cos(π(2j + 1)k / 2n) = Re(e^{−iπk/2n} V_k).
    """
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    out = (torch.fft.fft(v.to(torch.float64)) * _half_shift(n, -1.0, x.device)).real * math.sqrt(2.0 / n)
    out[..., 0] /= math.sqrt(2.0)
    return out.to(x.dtype)


def idct(c: Tensor) -> Tensor:
    """Inverse of `dct` (orthonormal DCT-III) along the last axis: ``c @ dct_matrix(n)``.

    With Y the unnormalised DCT-II values, the FFT of Makhoul's sequence is V_k = e^{iπk/2n}(Y_k − i·Y_{n−k})
    (Y_n = 0); the inverse FFT gives v, and x_{2j} = v_j, x_{2j+1} = v_{n−1−j}.
    """
    n = c.shape[-1]
    y = c.to(torch.float64) * math.sqrt(n / 2.0)
    y[..., 0] *= math.sqrt(2.0)
    y_rev = torch.cat([torch.zeros_like(y[..., :1]), y[..., 1:].flip(-1)], dim=-1)  # Y_{n−k}
    v = torch.fft.ifft(torch.complex(y, -y_rev) * _half_shift(n, 1.0, c.device)).real
    x = torch.empty_like(v)
    half = (n + 1) // 2
    x[..., ::2] = v[..., :half]
    x[..., 1::2] = v[..., half:].flip(-1)
    return x.to(c.dtype)


def _chain(points: np.ndarray, start: int) -> np.ndarray:
    """Exact greedy nearest-neighbour chain through all ``points`` (m, g) from ``start``; ties → lowest index."""
    m = points.shape[0]
    # Squared Euclidean distances (m, m) from coordinate differences, not ‖a‖² + ‖b‖² − 2ab: no
    # cancellation, so duplicate columns (pruned or padded weights) are at distance exactly 0.
    dist = np.zeros((m, m))
    for coord in points.T:
        diff = coord[:, None] - coord[None, :]
        dist += diff * diff
    penalty = np.zeros(m)
    out = np.empty(m, dtype=np.int64)
    cur = start
    for step in range(m):
        out[step] = cur
        penalty[cur] = np.inf
        if step + 1 < m:
            cur = int(np.argmin(dist[cur] + penalty))
    return out


def _leaves(points: np.ndarray, idx: np.ndarray, block: int, first: int | None) -> list[np.ndarray]:
    """k-d partition of ``idx`` into leaves of ≤ ``block`` points, in depth-first order.

    Each node splits at the median of its widest coordinate; the child holding ``first`` (the chain's start)
    is visited first, so the chain begins where the exact greedy chain begins. Sibling leaves are adjacent
    boxes, so consecutive leaves are close in space.
    """
    if idx.size <= block:
        return [np.sort(idx)]
    pts = points[idx]
    dim = int(np.argmax(pts.max(0) - pts.min(0)))
    half = idx.size // 2
    part = np.argpartition(pts[:, dim], half)
    left, right = idx[part[:half]], idx[part[half:]]
    if first is not None and np.any(right == first):
        left, right = right, left
    return _leaves(points, left, block, first) + _leaves(points, right, block, None)


def greedy_order(columns: Tensor, *, block: int = DEFAULT_BLOCK) -> Tensor:
    """Greedy nearest-neighbour ordering of ``columns`` (n, g), as in the seed, made sub-quadratic.

    The seed's rule: start at the column of largest norm, then repeatedly step to the nearest (squared
    Euclidean) unvisited column. Done literally (the seed deletes the visited column from an array every
    step) this costs O(n²·g) time plus O(n²·g) memory traffic: hours for a 512×512×3×3 conv at g = 4
    (n ≈ 590k).

    Here, when n ≤ ``block`` the chain is exactly the seed's (ties broken towards the lower index). For
    larger n the columns are first split by a k-d partition (median cuts of the widest coordinate) into
    leaves of at most ``block`` columns, visited depth-first starting with the leaf that holds the
    largest-norm column; inside each leaf the exact greedy chain runs, starting at the column nearest to
    where the previous leaf's chain ended. Cost: O(n log(n/block)) for the partition, O(n·block·g) for the
    distance matrices and O(n·block) for the arg-mins, i.e. O(n·(log n + block·g)); memory O(block²).
    Each step is still the nearest unvisited column within its leaf, so only leaf boundaries differ from
    the exact greedy chain.

    Args:
        columns: (n, g) real tensor, one g-vector per column of the reshaped weight.
        block: leaf size, ≥ 2.

    Returns:
        int64 permutation of range(n): ``columns[order]`` is the chain.
    """
    if columns.ndim != 2 or columns.shape[0] < 1:
        raise ValueError(f"greedy_order needs (n, g) columns with n ≥ 1, got shape {tuple(columns.shape)}")
    if block < 2:
        raise ValueError(f"block must be ≥ 2, got {block}")
    pts = columns.detach().to(torch.float64).cpu().numpy()
    start = int(np.argmax(np.einsum("ij,ij->i", pts, pts)))
    leaves = _leaves(pts, np.arange(pts.shape[0]), block, start)
    order, pos, end = np.empty(pts.shape[0], dtype=np.int64), 0, None
    for leaf in leaves:
        sub = pts[leaf]
        if end is None:
            first = int(np.flatnonzero(leaf == start)[0])
        else:
            first = int(np.argmin(((sub - end) ** 2).sum(1)))
        local = _chain(sub, first)
        order[pos:pos + leaf.size] = leaf[local]
        pos += leaf.size
        end = sub[local[-1]]
    return torch.from_numpy(order)


@dataclass(frozen=True)
class ReorderFactors:
    """A weight stored as reordered-row DCT coefficients.

    Attributes:
        coefficients: (g, t) lowest DCT-II frequencies of each reordered row, in the weight's dtype.
        permutation: int64 (n,) column order: reordered column k is original column ``permutation[k]``.
        shape: the weight's shape.
        n_cols: n = ⌈N/g⌉, the row length before truncation.
    """

    coefficients: Tensor
    permutation: Tensor
    shape: tuple[int, ...]
    n_cols: int

    def __post_init__(self) -> None:
        if self.coefficients.ndim != 2 or not 1 <= self.coefficients.shape[1] <= self.n_cols:
            raise ValueError(f"coefficients {tuple(self.coefficients.shape)} do not fit rows of {self.n_cols}")
        if self.permutation.shape != (self.n_cols,):
            raise ValueError(f"permutation of shape {tuple(self.permutation.shape)} for {self.n_cols} columns")
        if self.groups * self.n_cols < self.numel or (self.n_cols - 1) * self.groups >= self.numel:
            raise ValueError(f"{self.groups} rows of {self.n_cols} do not match a weight of shape {self.shape}")

    @property
    def groups(self) -> int:
        """g, the number of rows."""
        return int(self.coefficients.shape[0])

    @property
    def kept(self) -> int:
        """t, the coefficients kept per row."""
        return int(self.coefficients.shape[1])

    @property
    def numel(self) -> int:
        """N, elements of the dense weight."""
        return math.prod(self.shape)

    def reconstruct(self) -> Tensor:
        """Dense weight of shape ``shape``, in the coefficients' dtype."""
        return reorder_reconstruct(self)

    def rel_error(self, weight: Tensor) -> float:
        """Relative Frobenius error of the reconstruction against ``weight``."""
        return relative_error(weight, self.reconstruct())


def reorder_compress(weight: Tensor, groups: int, ratio: float, *, block: int = DEFAULT_BLOCK) -> ReorderFactors:
    """Reorder the columns of the (g, n) view of ``weight`` and keep the lowest DCT frequencies of each row.

    Args:
        weight: any real tensor (a conv kernel (O, I, kh, kw), a Linear weight (O, I), …) with N elements.
        groups: g, the number of rows, 1 ≤ g ≤ N; N is zero-padded to g·⌈N/g⌉ when g does not divide it.
        ratio: kept fraction of each row's coefficients, in (0, 1]: t = ⌈ratio·n⌉ (at least 1). 1 keeps
            everything and reconstructs exactly up to rounding.
        block: leaf size of `greedy_order`.

    Returns:
        `ReorderFactors` (the transform runs in float64; coefficients come back in ``weight``'s dtype).
    """
    if not weight.is_floating_point() or weight.numel() < 1:
        raise ValueError(f"reorder_compress needs a non-empty floating tensor, got {weight.dtype} "
                         f"{tuple(weight.shape)}")
    numel = weight.numel()
    if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= numel:
        raise ValueError(f"groups must be an integer in [1, {numel}], got {groups!r}")
    if not (isinstance(ratio, (int, float)) and 0.0 < float(ratio) <= 1.0):
        raise ValueError(f"ratio (kept fraction of coefficients) must be in (0, 1], got {ratio!r}")
    n = -(-numel // groups)
    kept = min(n, max(1, math.ceil(float(ratio) * n - 1e-9)))  # the slack keeps ratio = k/n from rounding up
    flat = torch.nn.functional.pad(weight.detach().to(torch.float64).reshape(-1), (0, groups * n - numel))
    rows = flat.reshape(groups, n)
    order = greedy_order(rows.T, block=block).to(rows.device)
    coeffs = dct(rows[:, order])[:, :kept]
    return ReorderFactors(coefficients=coeffs.to(weight.dtype).contiguous(), permutation=order,
                          shape=tuple(weight.shape), n_cols=n)


def reorder_reconstruct(f: ReorderFactors) -> Tensor:
    """Dense weight from `ReorderFactors`: zero-pad the coefficients, inverse DCT, undo the order, unpad."""
    coeffs = f.coefficients.to(torch.float64)
    full = torch.nn.functional.pad(coeffs, (0, f.n_cols - f.kept))
    ordered = idct(full)
    rows = torch.empty_like(ordered)
    rows[:, f.permutation.to(rows.device)] = ordered
    return rows.reshape(-1)[: f.numel].reshape(f.shape).to(f.coefficients.dtype)


def storage_ratio(f: ReorderFactors, *, value_bits: int = 32, index_bits: int | None = None) -> float:
    """Stored size over dense size: (g·t·value_bits + n·index_bits) / (N·value_bits).

    Args:
        f: the compressed weight.
        value_bits: bits per coefficient and per dense weight element (32 for float32).
        index_bits: bits per permutation entry; default ⌈log₂ n⌉ (at least 1), i.e. bit-packed. The seed
            stores an int32 per entry, which is ``index_bits=32``.

    Returns:
        The fraction of the dense storage that remains (below 1 means smaller); at ratio 1 it is above 1
        because of the padding and the index.
    """
    bits = index_bits if index_bits is not None else max(1, math.ceil(math.log2(f.n_cols)))
    return (f.groups * f.kept * value_bits + f.n_cols * bits) / (f.numel * value_bits)


def progressive_ratio(numel: int, r_prime: float, ref: float) -> float:
    """The seed's per-layer rule r_l = 1 + r'·√N / ref, as a kept fraction 1 / r_l for `reorder_compress`.

    Args:
        numel: N, elements of the layer's weight.
        r_prime: r' ≥ 0 (0 keeps everything).
        ref: the reference size (the seed uses 64 for ResNet-50, √(384·64) for MobileNet-V2).
    """
    if numel < 1 or r_prime < 0 or ref <= 0:
        raise ValueError(f"progressive_ratio needs numel ≥ 1, r' ≥ 0, ref > 0; got {numel}, {r_prime}, {ref}")
    return 1.0 / (1.0 + r_prime * math.sqrt(numel) / ref)
