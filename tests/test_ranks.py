"""Rank rule parsing and per-mode resolution."""

import pytest
import torch

from tdexport.errors import UsageError
from tdexport.factor._spectral import mode_spectrum, row_spectrum, unfold
from tdexport.ranks import mode_rank, parse_rank_rule, round_rank


@pytest.mark.parametrize("text,kind,value", [
    ("vbmf", "vbmf", 1.0), ("vbmf:0.8", "vbmf", 0.8), ("energy:0.9", "energy", 0.9),
    ("ratio:0.5", "ratio", 0.5), ("ratio:1", "ratio", 1.0), ("64", "fixed", 64.0), ("VBMF", "vbmf", 1.0),
])
def test_parse_accepts_contract_forms(text, kind, value):
    rule = parse_rank_rule(text)
    assert (rule.kind, rule.value, rule.text) == (kind, value, text)


def test_parse_plan_form():
    rule = parse_rank_rule("plan:some/dir/plan.json")
    assert rule.kind == "plan" and str(rule.path) == "some/dir/plan.json"


@pytest.mark.parametrize("text", ["", "abc", "energy", "energy:1", "energy:0", "ratio:1.5", "ratio:x",
                                  "vbmf:0", "vbmf:2", "0", "-3", "plan:", "svt:0", "svt:1.2", "nope:0.8"])
def test_parse_rejects_malformed_rules_naming_accepted_forms(text):
    with pytest.raises(UsageError, match="accepted forms: vbmf") as info:
        parse_rank_rule(text)
    assert info.value.exit_code == 2


def test_energy_rule_is_smallest_rank_strictly_above_fraction():
    values = torch.tensor([3.0, 2.0, 1.0, 1.0])  # energies 9, 4, 1, 1 of 15
    assert mode_rank(parse_rank_rule("energy:0.5"), 4, values=values) == 1  # 9/15 = 0.6 > 0.5
    assert mode_rank(parse_rank_rule("energy:0.6"), 4, values=values) == 2  # 0.6 is not > 0.6
    assert mode_rank(parse_rank_rule("energy:0.9"), 4, values=values) == 3  # 14/15 > 0.9


def test_ratio_fixed_and_round_to():
    assert mode_rank(parse_rank_rule("ratio:0.5"), 64) == 32
    assert mode_rank(parse_rank_rule("ratio:0.3"), 10) == 3
    assert mode_rank(parse_rank_rule("ratio:0.01"), 10) == 1
    assert mode_rank(parse_rank_rule("ratio:0.3"), 64, round_to=16) == 32  # 20 → 32
    assert mode_rank(parse_rank_rule("ratio:0.9"), 40, round_to=16) == 40  # 36 → 48, capped at 40
    assert mode_rank(parse_rank_rule("12"), 64) == 12
    with pytest.raises(UsageError, match="rank 100 is above a mode of size 64"):
        mode_rank(parse_rank_rule("100"), 64)
    assert round_rank(0, 5, None) == 1


def test_vbmf_weakening_keeps_more_as_factor_drops():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(64, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 300, generator=g, dtype=torch.float64)
    m = m / m.std() + 0.1 * torch.randn(64, 300, generator=g, dtype=torch.float64)
    values = torch.linalg.svdvals(m)
    rules = ("vbmf", "vbmf:0.8", "vbmf:0.5")
    ranks = [mode_rank(parse_rank_rule(r), 64, values=values, shape=(64, 300)) for r in rules]
    assert ranks[0] == 8
    assert ranks == [8, 20, 36]  # ⌈64 − W·(64 − 8)⌉


def _tucker_kernel(o, i, r_out, r_in, seed):
    """A conv kernel (o, i, 3, 3) of multilinear rank (r_out, r_in) on its channel modes, plus 10% noise."""
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(r_out, r_in, 3, 3, generator=g, dtype=torch.float64)
    w = torch.einsum("abhw,oa,ib->oihw", core, torch.randn(o, r_out, generator=g, dtype=torch.float64),
                     torch.randn(i, r_in, generator=g, dtype=torch.float64))
    return w / w.std() + 0.1 * torch.randn(o, i, 3, 3, generator=g, dtype=torch.float64)


def _plan_mode_ranks(rule, weight):
    """Per-mode ranks as the plan resolves them: mode spectra (Gram eigendecompositions) and unfolding shapes."""
    return [mode_rank(rule, weight.shape[m], values=mode_spectrum(weight, m).values,
                      shape=tuple(unfold(weight, m).shape)) for m in (0, 1)]


@pytest.mark.parametrize(("o", "i", "r_out", "r_in"), [(64, 48, 5, 4), (128, 64, 8, 6), (32, 96, 4, 7)])
@pytest.mark.parametrize("seed", [0, 1])
def test_vbmf_mode_ranks_ignore_dead_filters_and_inputs(o, i, r_out, r_in, seed):
    w = _tucker_kernel(o, i, r_out, r_in, seed)
    dead_out, dead_in = w.clone(), w.clone()
    dead_out[[0, o // 2, o - 1]] = 0  # three pruned filters: zero rows of the mode-0 unfolding
    dead_in[:, [1, i // 3, i - 2]] = 0  # three dead input channels: zero rows of the mode-1 unfolding
    vbmf, weakened = parse_rank_rule("vbmf"), parse_rank_rule("vbmf:0.5")
    assert _plan_mode_ranks(vbmf, w) == [r_out, r_in]
    for v in (dead_out, dead_in, dead_out.float(), dead_in.float()):
        assert _plan_mode_ranks(vbmf, v) == [r_out, r_in]
        assert _plan_mode_ranks(weakened, v) == _plan_mode_ranks(weakened, w)


@pytest.mark.parametrize(("o", "i", "rank"), [(96, 512, 6), (512, 96, 6)])
def test_vbmf_matrix_rank_ignores_dead_rows(o, i, rank):
    # The svd path: a Linear / 1×1 weight (o, i), spectrum of its smaller side, zeros where units are dead.
    g = torch.Generator().manual_seed(5)
    m = torch.randn(o, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, i, generator=g, dtype=torch.float64)
    m = m / m.std() + 0.1 * torch.randn(o, i, generator=g, dtype=torch.float64)
    dead = m.clone()
    if o <= i:
        dead[-3:] = 0  # dead output units
    else:
        dead[:, :3] = 0  # dead input features of a tall matrix
    rule = parse_rank_rule("vbmf")
    for weight in (m, dead, dead.float()):
        values = row_spectrum(weight.T if o > i else weight).values
        assert mode_rank(rule, min(o, i), values=values, shape=(o, i)) == rank


def test_vbmf_of_an_all_zero_kernel_is_rank_one():
    w = torch.zeros(16, 8, 3, 3)
    assert _plan_mode_ranks(parse_rank_rule("vbmf"), w) == [1, 1]
