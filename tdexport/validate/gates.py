"""Validation gates: thresholds on accuracy drop, speedup and parity error that decide exit code 3.

Only the gates the user asked for are evaluated. A requested gate whose measurement is missing (no
data set, no latency run) fails with value None rather than passing silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import GateFailed, UsageError

__all__ = ["GATES", "Gate", "evaluate_gates", "failed_gates", "raise_if_failed"]

# Gate name -> (what the value is, True when the value must stay at or below the limit).
GATES: dict[str, tuple[str, bool]] = {
    "max_acc_drop": ("top-1 points lost (original - compressed) on the headline backend", True),
    "min_speedup": ("headline speedup: median over paired ABBA rounds of (original round median latency / "
                    "compressed round median latency), not the ratio of the two p50s", False),
    "max_parity_err": ("largest relative L2 error, over the non-torch backends measured, of the compressed "
                       "model's logits against PyTorch fp32 eager of the same model on the same inputs", True),
}


@dataclass(frozen=True)
class Gate:
    """One evaluated gate.

    Attributes:
        name: ``max_acc_drop`` (top-1 points), ``min_speedup`` (×) or ``max_parity_err`` (relative L2).
        limit: the threshold the user set.
        value: the measured value, or None when it could not be measured (the gate then fails).
        passed: whether the value is within the limit (``<=`` for ``max_*``, ``>=`` for ``min_*``).
    """

    name: str
    limit: float
    value: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"limit", "value", "passed"}`` (the name is the key it is stored under)."""
        return {"limit": self.limit, "value": self.value, "passed": self.passed}

    def describe(self) -> str:
        """Short text such as ``min_speedup (value 0.93 < limit 1.5)``."""
        if self.value is None or math.isnan(self.value):
            return f"{self.name} (value unavailable, limit {self.limit:.4g})"
        upper = GATES[self.name][1]
        if self.passed:
            sign = "<=" if upper else ">="
        else:
            sign = ">" if upper else "<"
        return f"{self.name} (value {self.value:.4g} {sign} limit {self.limit:.4g})"


def _gate(name: str, limit: float, value: float | None) -> Gate:
    if not math.isfinite(limit):
        raise UsageError(f"gate {name} needs a finite limit, got {limit}")
    if value is None or math.isnan(value):
        return Gate(name, float(limit), None, False)
    upper = GATES[name][1]
    passed = value <= limit if upper else value >= limit
    return Gate(name, float(limit), float(value), bool(passed))


def evaluate_gates(
    *,
    max_acc_drop: float | None,
    min_speedup: float | None,
    max_parity_err: float | None,
    acc_drop: float | None,
    speedup: float | None,
    parity_err: float | None,
) -> dict[str, Gate]:
    """Evaluate the requested gates against the measured values.

    Args:
        max_acc_drop: limit on the top-1 drop in percentage points (original − compressed); None: no gate.
        min_speedup: minimum headline speedup (×, median of paired per-round ratios original / compressed);
            None: no gate.
        max_parity_err: limit on the compressed model's largest relative L2 logit error over the backends,
            each against PyTorch fp32 eager; None: no gate.
        acc_drop: measured top-1 drop in points, or None when accuracy was not measured.
        speedup: measured headline speedup (``PairedLatency.speedup``), or None when latency was not measured.
        parity_err: ``headline_values(...)["parity_err"]``, or None when parity was not measured.

    Returns:
        ``{name: Gate}`` for the requested gates only, in the order max_acc_drop, min_speedup, max_parity_err.
        A requested gate with an unavailable (None or NaN) value fails with value None.

    Raises:
        UsageError: a limit that is not finite.
    """
    requested = (
        ("max_acc_drop", max_acc_drop, acc_drop),
        ("min_speedup", min_speedup, speedup),
        ("max_parity_err", max_parity_err, parity_err),
    )
    return {name: _gate(name, limit, value) for name, limit, value in requested if limit is not None}


def failed_gates(gates: Mapping[str, Gate]) -> list[str]:
    """Names of the gates that did not pass, in their order."""
    return [name for name, gate in gates.items() if not gate.passed]


def raise_if_failed(gates: Mapping[str, Gate]) -> None:
    """Raise `GateFailed` (exit code 3) naming every failing gate, value and limit; return if all passed.

    Example message: ``gate failed: min_speedup (value 0.93 < limit 1.5); max_acc_drop (value unavailable,
    limit 1)``.
    """
    failing = [gates[name].describe() for name in failed_gates(gates)]
    if failing:
        raise GateFailed("gate failed: " + "; ".join(failing))
