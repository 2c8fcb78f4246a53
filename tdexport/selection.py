"""Which layers a compression considers: name globs, the stem and the classifier, and what each layer allows.

A layer is eligible for a format when it is an exact ``nn.Conv2d`` / ``nn.Linear`` that a factor chain can
replace (`tdexport.plan.factorable`), it is matched by ``--layers`` and not by ``--exclude``, and it is not
the stem or the classifier unless those are included. Every glob must match some layer, so a typo is an
error instead of a silently different plan.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from .errors import UsageError
from .plan import Plan, allowed_methods, factorable

if TYPE_CHECKING:
    from .sites import LayerSite

__all__ = ["check_globs", "check_replay_names", "eligibility", "ends", "method_for"]


def method_for(module: nn.Module, fmt: str) -> tuple[str | None, str]:
    """Method a layer gets under a format, or (None, reason it is kept)."""
    why = factorable(module)
    if why is not None:
        return None, why
    methods = allowed_methods(module)
    if "tucker2" not in methods:  # Linear and 1×1 convs
        return (fmt if fmt in methods else "svd"), ""
    if fmt == "svd":
        return None, "the svd format factors only 1×1 convs and Linear layers"
    return fmt, ""


def check_globs(sites: list[LayerSite], globs: Sequence[str], option: str) -> None:
    """Every glob must match some Conv2d / Linear name: a typo would otherwise silently change the plan."""
    names = [n for s in sites for n in s.aliases or (s.name,)]
    for glob in globs:
        if any(fnmatch.fnmatchcase(n, glob) for n in names):
            continue
        stem = glob.replace("*", "").replace("?", "").strip(".")
        close = difflib.get_close_matches(stem, names, n=5, cutoff=0.5)
        hint = f"close names: {', '.join(close)}" if close else f"layer names look like: {', '.join(names[:5])}"
        raise UsageError(f"{option} '{glob}' matches no Conv2d / Linear layer; {hint} "
                         f"(`tdexport inspect MODEL` lists them all)")


def check_replay_names(replay: Plan, sites: list[LayerSite], source: str) -> None:
    """A decomposed entry naming no layer of the model means the plan belongs to another model."""
    names = {n for s in sites for n in s.aliases or (s.name,)}
    for entry in replay.layers:
        if entry.decision == "decomposed" and entry.name not in names:
            close = difflib.get_close_matches(entry.name, sorted(names), n=3)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise UsageError(f"{source}: layer '{entry.name}' does not exist in model {replay.model} as run here"
                             f"{hint}")


def eligibility(site: LayerSite, fmt: str, stem: str | None, classifier: str, layers: Sequence[str],
                 exclude: Sequence[str], include_stem: bool, include_classifier: bool) -> tuple[str | None, str]:
    """The method a layer would get, or (None, the reason it stays dense)."""
    names = site.aliases or (site.name,)
    if layers and not any(fnmatch.fnmatchcase(n, g) for n in names for g in layers):
        return None, "not matched by --layers"
    hit = next((g for g in exclude for n in names if fnmatch.fnmatchcase(n, g)), None)
    if hit:
        return None, f"excluded by --exclude {hit}"
    if site.name == stem and not include_stem:
        return None, "stem (first conv); use --include-stem to factor it"
    if site.name == classifier and not include_classifier:
        return None, "classifier (last layer); use --include-classifier to factor it"
    return method_for(site.module, fmt)


def ends(sites: list[LayerSite]) -> tuple[str | None, str]:
    """Names of the stem (first conv executed, None without convs) and the classifier (last layer executed)."""
    stem = next((s.name for s in sites if isinstance(s.module, nn.Conv2d)), None)
    return stem, sites[-1].name
