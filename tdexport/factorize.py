"""One layer at a time: its weight's spectra, ranks from a per-layer rule, and the loaded factor chain.

`tdexport.planner` decides which layers to factor and records the plan; this module does the per-layer work
it delegates: `_Spectra` (lazily computed, shared by the rank rule and the factorization), `_resolve_ranks`
(a rule's ranks for a method) and `_decompose` (factor a module into a loaded chain and its error).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from . import layers as L
from .errors import UsageError
from .factor._spectral import Spectrum, row_spectrum, row_values, unfold
from .factor.cp import cp_als
from .factor.reorder import progressive_ratio, reorder_compress
from .factor.svd import truncated_svd
from .factor.svt import svt_ranks
from .factor.tt import tt_conv
from .factor.tt_general import balanced_split, clamp_tt_ranks, tt_general, tt_mode_sizes, tt_view
from .factor.tucker import tucker2
from .plan import LayerPlan, normalise_format
from .ranks import RankRule, mode_rank, round_rank

__all__ = ["MethodOptions", "format_options", "parse_tt_shape", "reorder_ranks", "reorder_storage_ratio",
           "storage_totals"]

DEFAULT_TT_MODES = 2


@dataclass(frozen=True)
class MethodOptions:
    """Per-format settings beyond the rank rule.

    Attributes:
        tt_modes: (modes of I, modes of O) for a balanced split in general TT.
        tt_sizes: explicit mode sizes by channel count (``{64: (8, 8)}``), used before the balanced split.
        reorder_groups: g, rows of the reordered weight view.
        reorder_ratio: kept fraction of DCT coefficients per row in (0, 1]; with ``progressive`` the seed's
            r' ≥ 0 of r_l = 1 + r'·√N / ref instead.
        progressive: per-layer ratio from the weight size (`tdexport.factor.reorder.progressive_ratio`).
        progressive_ref: the seed's reference size (64 for ResNet-50, √(384·64) for MobileNet-V2).
        stem_method: method for the stem conv when it is factored (``tucker1``), None for the format's own.
    """

    tt_modes: tuple[int, int] = (DEFAULT_TT_MODES, DEFAULT_TT_MODES)
    tt_sizes: dict[int, tuple[int, ...]] = field(default_factory=dict)
    reorder_groups: int = 4
    reorder_ratio: float = 0.25
    progressive: bool = False
    progressive_ref: float = 64.0
    stem_method: str | None = None

    def modes_for(self, channels: int, side: str) -> tuple[int, ...]:
        """General-TT mode sizes of a channel axis (``side`` ``in`` or ``out``)."""
        if channels in self.tt_sizes:
            return tuple(self.tt_sizes[channels])
        return balanced_split(channels, self.tt_modes[0 if side == "in" else 1])

    def record(self, fmt: str) -> dict:
        """The settings that shaped a plan of format ``fmt``, for plan.json's options."""
        out: dict = {}
        if fmt == "ttg":
            out["tt_modes"] = list(self.tt_modes)
            out["tt_sizes"] = {str(k): list(v) for k, v in self.tt_sizes.items()}
        if fmt == "reorder":
            out.update(reorder_groups=self.reorder_groups, reorder_ratio=self.reorder_ratio,
                       progressive=self.progressive, progressive_ref=self.progressive_ref)
        if self.stem_method:
            out["stem_method"] = self.stem_method
        return out


def parse_tt_shape(specs: Sequence[str]) -> tuple[tuple[int, int], dict[int, tuple[int, ...]]]:
    """``--tt-shape`` values: ``N`` (modes per channel axis), ``NIN,NOUT``, or ``C=AxB[xC…]`` (sizes for C channels).

    Raises:
        UsageError: any other form, a zero count, or sizes that do not multiply to C.
    """
    counts, sizes = (DEFAULT_TT_MODES, DEFAULT_TT_MODES), {}
    for raw in specs:
        text = raw.strip().lower()
        explicit = re.fullmatch(r"(\d+)=(\d+(?:x\d+)*)", text)
        pair = re.fullmatch(r"(\d+)(?:,(\d+))?", text)
        if explicit:
            channels, parts = int(explicit.group(1)), tuple(int(p) for p in explicit.group(2).split("x"))
            if math.prod(parts) != channels or min(parts) < 1:
                raise UsageError(f"--tt-shape {raw}: the sizes multiply to {math.prod(parts)}, not {channels}")
            sizes[channels] = parts
        elif pair:
            counts = (int(pair.group(1)), int(pair.group(2) or pair.group(1)))
            if min(counts) < 1:
                raise UsageError(f"--tt-shape {raw}: a mode count must be at least 1")
        else:
            raise UsageError(f"--tt-shape {raw!r}: expected N (modes per channel axis), NIN,NOUT, or C=AxB "
                             "(mode sizes for C channels, e.g. 256=16x16)")
    return counts, sizes


class _Spectra:
    """Lazily computed spectra of a layer's weight, shared by the rank rule and the factorization.

    With ``values_only`` (a plan that factorizes nothing) the ``*_values`` methods compute singular values
    without vectors; otherwise they come from the full spectrum the factorization then reuses.
    """

    def __init__(self, weight: torch.Tensor, *, values_only: bool = False) -> None:
        self.weight = weight
        self.values_only = values_only
        self._cache: dict[str, Spectrum] = {}
        self._values: dict[str, torch.Tensor] = {}

    def _rows(self, key: str) -> torch.Tensor:
        """The matrix whose row spectrum ``key`` names: a mode unfolding, or the weight matrix (fewer rows)."""
        if key == "matrix":
            m = L.weight_matrix_of(self.weight)
            return m.T if m.shape[0] > m.shape[1] else m
        return unfold(self.weight, int(key[len("mode"):]))

    def _spectrum(self, key: str) -> Spectrum:
        if key not in self._cache:
            self._cache[key] = row_spectrum(self._rows(key))
        return self._cache[key]

    def _only_values(self, key: str) -> torch.Tensor:
        if key in self._cache or not self.values_only:
            return self._spectrum(key).values
        if key not in self._values:
            self._values[key] = row_values(self._rows(key))
        return self._values[key]

    def mode(self, mode: int) -> Spectrum:
        """Spectrum of the mode-``mode`` unfolding (values and vectors)."""
        return self._spectrum(f"mode{mode}")

    def matrix(self) -> Spectrum:
        """Spectrum of the weight matrix (O, I·kh·kw) from its smaller side."""
        return self._spectrum("matrix")

    def mode_values(self, mode: int) -> torch.Tensor:
        """Singular values of the mode-``mode`` unfolding, float64, descending (``mode(mode).values``)."""
        return self._only_values(f"mode{mode}")

    def matrix_values(self) -> torch.Tensor:
        """Singular values of the weight matrix, float64, descending (``matrix().values``)."""
        return self._only_values("matrix")


def format_options(format: str, tt_type: str, tt_shape: Sequence[str], groups: int, coef_ratio: float,
                    progressive: bool, progressive_ref: float, stem_method: str | None) -> tuple[str, MethodOptions]:
    """The canonical format (``tt`` + general → ``ttg``) and its `MethodOptions`, refusing misplaced options."""
    fmt = normalise_format(format)
    if tt_type not in ("special", "general"):
        raise UsageError(f"--tt-type must be 'special' or 'general', got {tt_type!r}")
    if tt_type == "general":
        if fmt not in ("tt", "ttg"):
            raise UsageError(f"--tt-type general applies to --format tt, not {format}")
        fmt = "ttg"
    if tt_shape and fmt != "ttg":
        raise UsageError("--tt-shape applies to --format tt --tt-type general")
    if stem_method not in (None, "tucker1"):
        raise UsageError(f"--stem-method takes 'tucker1', got {stem_method!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise UsageError(f"--groups must be a positive integer, got {groups!r}")
    if progressive and not coef_ratio >= 0:
        raise UsageError(f"--coef-ratio with --progressive is r' ≥ 0, got {coef_ratio!r}")
    if not progressive and not 0 < coef_ratio <= 1:
        raise UsageError(f"--coef-ratio is the kept fraction of DCT coefficients, in (0, 1]; got {coef_ratio!r}")
    counts, sizes = parse_tt_shape(tt_shape)
    return fmt, MethodOptions(tt_modes=counts, tt_sizes=sizes, reorder_groups=groups, reorder_ratio=coef_ratio,
                              progressive=progressive, progressive_ref=progressive_ref,
                              stem_method=stem_method or ("tucker1" if fmt == "ht2" else None))


def storage_totals(entries: Sequence[LayerPlan]) -> dict[str, int]:
    """Whole-model weight storage in bits before and after reordering (32-bit values, packed indices)."""
    before = sum(32 * math.prod(e.shape) for e in entries)
    after = sum(round(32 * math.prod(e.shape) * (e.storage_ratio if e.storage_ratio is not None else 1.0))
                for e in entries)
    return {"storage_bits_before": before, "storage_bits_after": after}


def _svt_single(values: torch.Tensor, ratio: float) -> int:
    """`svt:R` on one spectrum: the rank whose kept norm √(Σ_{j≤r} σ²/Σσ²) is closest to R (at least 1)."""
    energy = (values.to(torch.float64) ** 2).cumsum(0)
    kept = (energy / energy[-1].clamp_min(1e-300)).sqrt()
    above = int((kept < ratio).sum())  # ranks 1..above fall short of R; rank above+1 reaches it
    best = min(above + 1, kept.numel())
    if above >= 1 and abs(float(kept[above - 1]) - ratio) < abs(float(kept[best - 1]) - ratio):
        best = above
    return max(1, best)


def _rule_rank(rule: RankRule, size: int, spectrum: torch.Tensor | None, shape: tuple[int, int] | None,
               round_to: int | None) -> int:
    """One mode's (or one matrix's) rank under ``rule``, including `svt:R` on a single spectrum."""
    if rule.kind == "svt":
        return round_rank(min(size, _svt_single(spectrum, rule.value)), size, round_to)
    return mode_rank(rule, size, values=spectrum, shape=shape, round_to=round_to)


def _tucker_pair(weight: torch.Tensor, rule: RankRule, spectra: _Spectra, round_to: int | None) -> list[int]:
    """(R_out, R_in) of Tucker-2 / special TT: the rule per channel mode, or one SVT threshold for both."""
    if rule.kind == "svt":
        r0, r1 = _svt_pair(weight, rule.value, spectra)
        return [round_rank(r0, weight.shape[0], round_to), round_rank(r1, weight.shape[1], round_to)]
    return [mode_rank(rule, weight.shape[m], values=spectra.mode_values(m) if rule.needs_spectrum else None,
                      shape=tuple(unfold(weight, m).shape) if rule.needs_spectrum else None, round_to=round_to)
            for m in (0, 1)]


def _svt_pair(weight: torch.Tensor, ratio: float, spectra: _Spectra) -> tuple[int, int]:
    """`svt:R` on both channel modes, searched on the exact ‖Ŵ‖/‖W‖ of the HOSVD projection at each probe."""
    s0, s1 = spectra.mode(0), spectra.mode(1)
    w64 = weight.detach().to(torch.float64)
    total = float(torch.linalg.vector_norm(w64))

    # The core at ranks (r0, r1) is the leading (r0, r1) block of the projection on all the vectors, so one
    # projection and a 2-D cumulative sum of its squared (r0, r1) entries price every probe of the search.
    core = torch.einsum("oikl,or,is->rskl", w64, s0.vectors, s1.vectors)
    kept = core.square().sum(dim=(2, 3)).cumsum(0).cumsum(1)  # kept[r0 - 1, r1 - 1] = ‖core(r0, r1)‖²

    def norm_ratio(r0: int, r1: int) -> float:
        return float(kept[r0 - 1, r1 - 1].clamp_min(0.0).sqrt()) / max(total, 1e-300)

    r0, r1, _ = svt_ranks(s0.values, s1.values, ratio, norm_ratio=norm_ratio)
    return r0, r1


def _ht2_ranks(weight: torch.Tensor, rule: RankRule, spectra: _Spectra, round_to: int | None) -> list[int]:
    """(R1, R13, R3): the rule on the input and output modes, then on the matrix HT-2's root is fitted to.

    R13 follows the same rule applied to Y = W ×_I U1ᵀ ×_O U3ᵀ arranged (R1·kh × R3·kw) at the chosen R1 and
    R3 (for ``energy:`` this is the HT-2 seed's rule, measured on the matrix actually truncated).
    """
    from .factor.ht2 import ht2_projected_matrix

    r3, r1 = _tucker_pair(weight, rule, spectra, round_to)
    kh, kw = weight.shape[2], weight.shape[3]
    size = min(r1 * kh, r3 * kw)
    values = shape = None
    if rule.needs_spectrum:
        w64 = weight.to(torch.float64)
        y = ht2_projected_matrix(w64, spectra.mode(1).vectors[:, :r1], spectra.mode(0).vectors[:, :r3])
        values, shape = torch.linalg.svdvals(y), tuple(y.shape)
    r13 = min(size, _rule_rank(rule, size, values, shape, round_to))
    return [r1, r13, r3]


def _tt_general_choice(weight: torch.Tensor, rule: RankRule, spectra: _Spectra, round_to: int | None,
                       opts: MethodOptions) -> tuple[list[int], list[list[int]], str]:
    """General-TT modes and bond ranks: the rule on each bond's unfolding of the TT view, then clamped.

    Bond k separates the modes (n_1…n_k) from (n_{k+1}…n_d); its unfolding bounds the TT rank there, so
    the rule (energy, vbmf, svt, ratio of min(left, right), or a fixed maximum) is applied to its spectrum.
    The clamp of `clamp_tt_ranks` then lowers bonds the neighbouring cores cannot fill (no dead channels).
    """
    o, i = int(weight.shape[0]), int(weight.shape[1])
    kernel = (int(weight.shape[2]), int(weight.shape[3])) if weight.ndim == 4 else None
    s_in, s_out = opts.modes_for(i, "in"), opts.modes_for(o, "out")
    sizes = tt_mode_sizes(s_in, s_out, kernel)
    view = tt_view(weight.detach().to(torch.float64), s_in, s_out) if rule.needs_spectrum else None
    wanted = []
    for k in range(1, len(sizes)):
        left, right = math.prod(sizes[:k]), math.prod(sizes[k:])
        size = min(left, right)
        values = torch.linalg.svdvals(view.reshape(left, right)) if view is not None else None
        if rule.kind == "fixed":
            wanted.append(int(rule.value))  # a fixed TT rank is every bond's maximum; the clamp below lowers it
        else:
            wanted.append(_rule_rank(rule, size, values, (left, right), round_to))
    _, used = clamp_tt_ranks(sizes, wanted)
    lowered = [f"bond {k + 1} {w}→{u}" for k, (w, u) in enumerate(zip(wanted, used, strict=True)) if u < w]
    note = f" (clamped to what the cores carry: {', '.join(lowered)})" if lowered else ""
    return list(used), [list(s_in), list(s_out)], note


def _resolve_ranks(method: str, weight: torch.Tensor, rule: RankRule, spectra: _Spectra,
                   round_to: int | None, opts: MethodOptions | None = None
                   ) -> tuple[list[int], list[list[int]] | None, str]:
    """A layer's ranks under ``rule``: (ranks, TT modes or None, a note for the plan's reason)."""
    opts = opts or MethodOptions()
    if rule.kind == "svt" and method == "cp":
        raise UsageError("svt:R thresholds singular values; CP has none (use tucker, tt, ht2 or svd)")
    if method == "reorder":
        ratio = opts.reorder_ratio
        if opts.progressive:
            ratio = progressive_ratio(weight.numel(), opts.reorder_ratio, opts.progressive_ref)
        return reorder_ranks(weight.numel(), opts.reorder_groups, ratio), None, ""
    if method == "ttg":
        return _tt_general_choice(weight, rule, spectra, round_to, opts)
    if method == "ht2":
        return _ht2_ranks(weight, rule, spectra, round_to), None, ""
    if method in ("svd", "tucker1"):
        o, i = weight.shape[0], weight[0].numel()
        values = spectra.matrix_values() if rule.needs_spectrum else None
        return [_rule_rank(rule, min(o, i), values, (o, i), round_to)], None, ""
    if method == "cp":
        if rule.kind in ("ratio", "fixed"):
            # CP has one rank: ratio is of the output channels; a fixed rank may exceed a mode size
            # (CP ranks are not bounded by mode sizes) but not the larger channel count.
            size = max(weight.shape[0], weight.shape[1]) if rule.kind == "fixed" else weight.shape[0]
            return [mode_rank(rule, size, round_to=round_to)], None, ""
        return [max(_tucker_pair(weight, rule, spectra, round_to))], None, ""
    return _tucker_pair(weight, rule, spectra, round_to), None, ""


def _decompose(method: str, module: nn.Module, ranks: list[int], spectra: _Spectra, *, iters: int,
               cp_iters: int, modes: list[list[int]] | None = None) -> tuple[nn.Sequential, float]:
    """Factor ``module`` at ``ranks``: the loaded chain and ‖W − Ŵ‖/‖W‖."""
    weight = module.weight.detach()
    seq = L.structure_for(method, module, ranks, modes=modes)
    if method == "tucker2":
        f = tucker2(weight, (ranks[0], ranks[1]), iters=iters, spectra=[spectra.mode(0), spectra.mode(1)])
        return L.load_tucker2(seq, module, f), f.errors[-1]
    if method == "tt":
        f = tt_conv(weight, (ranks[0], ranks[1]))
        return L.load_tucker2(seq, module, f), f.errors[-1]
    if method == "ht2":
        from .factor.ht2 import ht2
        from .layers_extra import load_ht2

        f = ht2(weight, ranks, spectra=[spectra.mode(1), spectra.mode(0)])
        return load_ht2(seq, module, f), f.rel_error(weight)
    if method == "tucker1":
        from .factor.tucker1 import tucker1
        from .layers_extra import load_tucker1

        f = tucker1(weight, ranks[0])
        return load_tucker1(seq, module, f), f.rel_error(weight)
    if method == "ttg":
        from .layers_tt import load_tt_general

        f = tt_general(weight, modes[0], modes[1], list(ranks))
        load_tt_general(seq[0], module, f)
        return seq, f.error
    if method == "reorder":
        from .layers_reorder import load_reorder

        f = reorder_compress(weight, ranks[0], ranks[1] / (-(-weight.numel() // ranks[0])))
        load_reorder(seq[0], module, f)
        return seq, f.rel_error(weight)
    if method == "cp":
        f = cp_als(weight, ranks[0], iters=cp_iters, generator=torch.Generator().manual_seed(0))
        return L.load_cp(seq, module, f), f.rel_error(weight)
    matrix = L.weight_matrix_of(weight)
    f = truncated_svd(matrix, ranks[0], spectrum=spectra.matrix())
    return L.load_svd(seq, module, f), f.rel_error(matrix)


def reorder_ranks(numel: int, groups: int, ratio: float) -> list[int]:
    """[g, t] for a weight of ``numel`` elements (`tdexport.layers_reorder.reorder_ranks`); bad g: `UsageError`."""
    from .layers_reorder import reorder_ranks as ranks_of

    if not 1 <= groups <= numel:
        raise UsageError(f"--groups {groups} must be in [1, {numel}] (the layer's weight elements)")
    return ranks_of(numel, groups, ratio)


def reorder_storage_ratio(numel: int, groups: int, kept: int, *, value_bits: int = 32) -> float:
    """Stored bits (g·t values + n bit-packed indices of ⌈log₂ n⌉ bits) over the dense N values."""
    n = -(-numel // groups)
    return (groups * kept * value_bits + n * max(1, math.ceil(math.log2(n)))) / (numel * value_bits)
