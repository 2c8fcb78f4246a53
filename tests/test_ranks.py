"""Rank rule parsing and per-mode resolution."""

import pytest
import torch

from tdexport.errors import UsageError
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
                                  "vbmf:0", "vbmf:2", "0", "-3", "plan:", "svt:0.8"])
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
