"""Structured errors: how an exception is recorded and how it is thrown back in on replay."""

from __future__ import annotations

import traceback as tb
from typing import Any

from squidmesh.core import contracts
from squidmesh.core.history import Entry
from squidmesh.errors import NonRetryable, StepFailed, TimedOut

__all__ = ["error_info", "exception_for", "qualname", "timeout_error"]


def qualname(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def error_info(
    exc: BaseException, *, retryable: bool | None = None, with_traceback: bool = True
) -> dict[str, Any]:
    """The JSON record of an exception: type (and its bases), message, details, traceback."""
    details = getattr(exc, "details", None)
    try:
        details = contracts.encode(details, what="error details")
    except contracts.EncodeError:
        details = repr(details)
    if retryable is None:
        retryable = not isinstance(exc, NonRetryable)
    return {
        "type": qualname(type(exc)),
        "types": [qualname(c) for c in type(exc).__mro__ if issubclass(c, BaseException)],
        "message": str(exc),
        "details": details,
        "traceback": "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        if with_traceback and exc.__traceback__ is not None
        else None,
        "retryable": retryable,
    }


def timeout_error(entry: Entry) -> dict[str, Any]:
    """The error recorded when an approval or event wait times out."""
    return {
        "type": qualname(TimedOut),
        "types": [qualname(c) for c in TimedOut.__mro__ if issubclass(c, BaseException)],
        "message": f"{entry.kind} {entry.name!r} timed out",
        "details": {"timeout": (entry.input or {}).get("timeout")},
        "traceback": None,
        "retryable": False,
    }


def exception_for(entry: Entry) -> BaseException:
    """The exception thrown into workflow code for a failed entry."""
    error = entry.error or {}
    if entry.kind in ("approval", "event"):
        return TimedOut(name=entry.name, seq=entry.seq)
    return StepFailed(
        step=entry.name,
        seq=entry.seq,
        error_type=str(error.get("type", "Exception")),
        error_types=tuple(error.get("types") or ()),
        error_message=str(error.get("message", "")),
        details=error.get("details"),
        attempts=entry.attempts,
        traceback=error.get("traceback"),
        retryable=bool(error.get("retryable", True)),
    )
