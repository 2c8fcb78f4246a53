"""Exception hierarchy of tdexport; each class carries the process exit code the CLI uses.

Internal bugs deliberately sit outside this hierarchy and end the CLI with exit code 1.
"""

from __future__ import annotations

__all__ = ["TdexportError", "UsageError", "DecompositionError", "GateFailed", "BackendUnavailable"]


class TdexportError(Exception):
    """Base of every error tdexport raises on purpose."""

    exit_code = 1


class UsageError(TdexportError):
    """Bad input from the user: unknown model, malformed rank rule, missing or corrupt file (exit 2)."""

    exit_code = 2


class DecompositionError(UsageError):
    """A factorization could not be computed at the requested ranks (diverged, NaN) (exit 2)."""


class GateFailed(TdexportError):
    """A validation gate (accuracy drop, speedup, parity) was violated (exit 3)."""

    exit_code = 3


class BackendUnavailable(TdexportError):
    """A requested runtime, device or optional package is not available here (exit 4)."""

    exit_code = 4


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (at most ``limit`` characters), or its type name.

    Third-party errors (torch, onnxruntime, pickle) carry multi-line dumps; tdexport reports one line.
    """
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(err).__name__
