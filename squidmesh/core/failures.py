"""Structured errors: how an exception is recorded and how it is thrown back in on replay."""

from __future__ import annotations

import traceback as tb
from typing import Any

from squidmesh.core import contracts
from squidmesh.core.history import Entry
from squidmesh.errors import ChildFailed, NonRetryable, StepFailed, TimedOut, UnstorableValueError

__all__ = [
    "child_error",
    "error_info",
    "exception_for",
    "qualname",
    "safe_text",
    "timeout_error",
]


def qualname(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: error records are squidmesh's own: they are made storable rather than refused, their
#: texts cut to these many characters (a traceback keeps its end, where the error is)
MESSAGE_CHARS = 8_000
DETAILS_BYTES = 16_000
TRACEBACK_CHARS = 32_000


def safe_text(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` made storable (NUL and lone surrogates replaced) and cut to ``limit``."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > limit:
        cut = len(text) - limit
        marker = f"[... {cut:,} characters cut ...]"
        text = marker + text[-limit:] if keep_end else text[:limit] + marker
    return text


def error_info(
    exc: BaseException, *, retryable: bool | None = None, with_traceback: bool = True
) -> dict[str, Any]:
    """The JSON record of an exception: type (and its bases), message, details, traceback.

    Always storable and bounded, whatever the exception carries: a NUL character in a
    message must not turn a step's failure into a failure to record it.
    """
    details = getattr(exc, "details", None)
    try:
        details = contracts.stored(details, what="error details", max_bytes=DETAILS_BYTES)
    except UnstorableValueError:
        details = safe_text(repr(details), DETAILS_BYTES // 4)
    if retryable is None:
        retryable = not isinstance(exc, NonRetryable)
    trace = None
    if with_traceback and exc.__traceback__ is not None:
        trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        trace = safe_text(trace, TRACEBACK_CHARS, keep_end=True)
    return {
        "type": qualname(type(exc)),
        "types": [qualname(c) for c in type(exc).__mro__ if issubclass(c, BaseException)],
        "message": safe_text(str(exc), MESSAGE_CHARS),
        "details": details,
        "traceback": trace,
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


def child_error(
    entry: Entry, *, child_run_id: str | None, status: str, error: dict[str, Any] | None
) -> dict[str, Any]:
    """The error recorded on a parent's ``sm.child`` entry when the child run failed, was
    cancelled (``status``) or could not be started (``not_started``, no run id):
    ``exception_for`` throws it back in as ``sm.ChildFailed``."""
    exc = ChildFailed(
        child_run_id=child_run_id,
        workflow=entry.name,
        seq=entry.seq,
        child_status=status,
        child_error=error,
    )
    return {
        "type": qualname(ChildFailed),
        "types": [qualname(c) for c in ChildFailed.__mro__ if issubclass(c, BaseException)],
        "message": safe_text(str(exc), MESSAGE_CHARS),
        "details": {
            "child_run_id": child_run_id,
            "workflow": entry.name,
            "status": status,
            "error": error,
        },
        "traceback": None,
        "retryable": False,
    }


def exception_for(entry: Entry) -> BaseException:
    """The exception thrown into workflow code for a failed entry."""
    error = entry.error or {}
    if entry.kind in ("approval", "event"):
        return TimedOut(name=entry.name, seq=entry.seq)
    if entry.kind in ("child", "start_child"):
        found = error.get("details")
        details: dict[str, Any] = found if isinstance(found, dict) else {}
        return ChildFailed(
            str(error.get("message")) if error.get("message") else None,
            child_run_id=details.get("child_run_id"),
            workflow=entry.name,
            seq=entry.seq,
            child_status=str(details.get("status") or "failed"),
            child_error=details.get("error"),
        )
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
