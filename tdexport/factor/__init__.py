"""Pure factorization maths on torch tensors: no nn.Module, no files.

One small module per method, functions in and named results out (each with ``reconstruct()`` and a
relative error): `svd`, `tucker` (partial Tucker / Tucker-2 by HOSVD + HOOI), `cp` (CP-ALS) and
`evbmf` (rank estimation). `reference` wraps tensorly for tests and benchmarks and is not imported here.
"""

from ._spectral import Spectrum, mode_spectrum, relative_error, row_spectrum, unfold
from .cp import CPFactors, cp_als
from .evbmf import evbmf_rank, evbmf_rank_from_values
from .svd import SVDFactors, truncated_svd
from .tucker import TuckerFactors, partial_tucker, tucker2

__all__ = [
    "CPFactors",
    "SVDFactors",
    "Spectrum",
    "TuckerFactors",
    "cp_als",
    "evbmf_rank",
    "evbmf_rank_from_values",
    "mode_spectrum",
    "partial_tucker",
    "relative_error",
    "row_spectrum",
    "truncated_svd",
    "tucker2",
    "unfold",
]
