"""Exception hierarchy of tdexport; each class carries the process exit code the CLI uses.

Internal bugs deliberately sit outside this hierarchy and end the CLI with exit code 1.
"""

from __future__ import annotations

__all__ = ["TdexportError", "UsageError", "DecompositionError", "GateFailed", "BackendUnavailable",
           "EngineBuildError", "first_line", "user_message"]


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


class EngineBuildError(TdexportError):
    """TensorRT parsed the model but did not produce an engine (exit 1); the message quotes TensorRT's errors."""

    exit_code = 1


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (at most ``limit`` characters), or its type name.

    Third-party errors (torch, onnxruntime, pickle) carry multi-line dumps; tdexport reports one line.
    """
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(err).__name__


def user_message(err: BaseException) -> str:
    """The message of a tdexport error as the user should read it.

    An error raised inside a DataLoader worker reaches the main process re-raised by torch with the text
    "Caught UsageError in DataLoader worker process N." followed by the worker's traceback; the user's
    message is the traceback's last line, after the exception's qualified name.
    """
    text = str(err)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [ln.strip() for ln in text.splitlines() if ln.strip()][-1]
        name, sep, rest = last.partition(": ")
        return rest if sep and name.rsplit(".", 1)[-1] == type(err).__name__ else last
    return text
