"""Value checks of the recipe schema: typed converters with the text of what they accept.

`tdexport.recipes.schema` builds its tables from these; `SchemaError` carries the dotted key, the problem
and what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class SchemaError(Exception):
    """A recipe value that does not fit the schema.

    Attributes:
        path: dotted key, e.g. ``finetune.lr`` (``""`` for the whole recipe).
        problem: what is wrong, e.g. ``got 'abc' (a string)``.
        accepts: what the key accepts, e.g. ``a number > 0``.
    """

    def __init__(self, path: str, problem: str, accepts: str = "") -> None:
        super().__init__(f"{path or '(recipe)'}: {problem}" + (f"; accepted: {accepts}" if accepts else ""))
        self.path, self.problem, self.accepts = path, problem, accepts


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)
    shown = repr(value) if not isinstance(value, (list, dict)) else ""
    return f"{shown} ({kind})" if shown and value is not None else kind


# ---------------------------------------------------------------------------------------------- value checks


@dataclass(frozen=True)
class Check:
    """One value's check: ``accepts`` says what passes; ``convert(value)`` returns it normalised or `_BAD`.

    ``explain`` (optional) returns a specific reason for a value of the right type that is still refused
    (a malformed rank rule), or None when ``convert`` decides alone. A list check has an ``item`` check
    applied to every element (errors name the index: ``export.precision[1]``).
    """

    accepts: str
    convert: Callable[[Any], Any]
    explain: Callable[[Any], str | None] | None = None
    item: Check | None = None
    nonempty: bool = False

    def __call__(self, value: Any, path: str) -> Any:
        """The normalised value, or `SchemaError` naming ``path``."""
        if self.item is not None:
            if not isinstance(value, list) or (self.nonempty and not value):
                empty = " (empty)" if isinstance(value, list) else ""
                raise SchemaError(path, f"got {_describe(value)}{empty}", self.accepts)
            return [self.item(v, f"{path}[{i}]") for i, v in enumerate(value)]
        reason = self.explain(value) if self.explain is not None else None
        if reason is not None:
            raise SchemaError(path, reason, self.accepts)
        out = self.convert(value)
        if out is _BAD:
            raise SchemaError(path, f"got {_describe(value)}", self.accepts)
        return out


_BAD = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def integer(low: int | None = None) -> Check:
    """An integer (not a boolean), at least ``low``."""
    text = "an integer" + (f" ≥ {low}" if low is not None else "")
    return Check(text, lambda v: v if _is_int(v) and (low is None or v >= low) else _BAD)


def number(low: float | None = None, *, open_low: bool = False, high: float | None = None,
           open_high: bool = False) -> Check:
    """A finite int or float in the given range (returned as float)."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if open_low else '≥'} {low:g}")
    if high is not None:
        parts.append(f"{'<' if open_high else '≤'} {high:g}")

    def convert(v: Any) -> Any:
        if not _is_num(v):
            return _BAD
        if low is not None and (v <= low if open_low else v < low):
            return _BAD
        if high is not None and (v >= high if open_high else v > high):
            return _BAD
        return float(v)

    return Check("a number" + (" " + " and ".join(parts) if parts else ""), convert)


def boolean() -> Check:
    """A YAML boolean (true or false)."""
    return Check("true or false", lambda v: v if isinstance(v, bool) else _BAD)


def string() -> Check:
    """A non-empty string."""
    return Check("a non-empty string", lambda v: v if isinstance(v, str) and v.strip() else _BAD)


def enum(*choices: str) -> Check:
    """One of ``choices`` (exact spelling)."""
    return Check("one of " + ", ".join(choices), lambda v: v if isinstance(v, str) and v in choices else _BAD)


def nullable(check: Check) -> Check:
    """``check``, or null."""
    return Check(f"null or {check.accepts}", lambda v: None if v is None else check.convert(v),
                 (lambda v: None if v is None else check.explain(v)) if check.explain else None)


def list_of(item: Check, *, nonempty: bool = False) -> Check:
    """A YAML list whose every item passes ``item`` (its errors name the index: ``export.precision[1]``)."""
    what = item.accepts.removeprefix("a ").removeprefix("an ")
    return Check(f"a {'non-empty ' if nonempty else ''}list of {what}", lambda v: v, item=item, nonempty=nonempty)


def _rank_rule_reason(value: Any) -> str | None:
    from ..errors import UsageError
    from ..ranks import parse_rank_rule

    if _is_int(value):
        return None if value >= 1 else f"a fixed rank must be ≥ 1, got {value}"
    if not isinstance(value, str) or not value.strip():
        return None  # convert reports the type
    try:
        parse_rank_rule(value)
    except UsageError as err:
        return str(err)
    return None


def _target_reason(value: Any) -> str | None:
    from ..cost import parse_target
    from ..errors import UsageError

    if not isinstance(value, str):
        return None
    try:
        parse_target(value)
    except UsageError as err:
        return str(err)
    return None


RANK_RULE = Check("a rank rule: vbmf, vbmf:W, energy:E, ratio:F, svt:R, N, plan:FILE, params:Kx, macs:Kx, latency:Kx "
                  "(null: only the layers of compression.ranks are factored)",
                  lambda v: None if v is None else str(v) if _is_int(v) or (isinstance(v, str) and v.strip()) else _BAD,
                  _rank_rule_reason)
TARGET = Check("null or BACKEND[:BATCH] with BACKEND one of ort-cpu, ort-cuda, ort-trt, trt",
               lambda v: None if v is None else (v if isinstance(v, str) and v.strip() else _BAD),
               lambda v: None if v is None else _target_reason(v))
ROUND_TO = Check("null, an integer ≥ 1 or auto",
                 lambda v: v if v is None or v == "auto" or (_is_int(v) and v >= 1) else _BAD)
TT_SHAPE_ITEM = Check("a --tt-shape string such as \"2\", \"2,1\" or \"256=16x16\"",
                      lambda v: str(v) if (_is_int(v) and v >= 1) or (isinstance(v, str) and v.strip()) else _BAD)
