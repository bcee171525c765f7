"""Structured errors: how an exception is recorded (an ``ErrorRecord``) and how it is
thrown back in on replay."""

from __future__ import annotations

import traceback as tb
from typing import Any

from squidmesh.core import contracts
from squidmesh.core.history import Entry
from squidmesh.core.records import ErrorRecord
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


def _qualnames(cls: type[BaseException]) -> tuple[str, ...]:
    return tuple(qualname(c) for c in cls.__mro__ if issubclass(c, BaseException))


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
) -> ErrorRecord:
    """The record of an exception: type (and its bases), message, details, traceback.

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
    return ErrorRecord(
        type=qualname(type(exc)),
        types=_qualnames(type(exc)),
        message=safe_text(str(exc), MESSAGE_CHARS),
        details=details,
        traceback=trace,
        retryable=retryable,
    )


def timeout_error(entry: Entry) -> ErrorRecord:
    """The error recorded when an approval or event wait times out."""
    return ErrorRecord(
        type=qualname(TimedOut),
        types=_qualnames(TimedOut),
        message=f"{entry.kind} {entry.name!r} timed out",
        details={"timeout": (entry.input or {}).get("timeout")},
        traceback=None,
        retryable=False,
    )


def child_error(
    entry: Entry, *, child_run_id: str | None, status: str, error: ErrorRecord | None
) -> ErrorRecord:
    """The error recorded on a parent's ``sm.child`` entry when the child run failed, was
    cancelled (``status``) or could not be started (``not_started``, no run id):
    ``exception_for`` throws it back in as ``sm.ChildFailed``."""
    stored = error.to_json() if error is not None else None
    exc = ChildFailed(
        child_run_id=child_run_id,
        workflow=entry.name,
        seq=entry.seq,
        child_status=status,
        child_error=stored,
    )
    return ErrorRecord(
        type=qualname(ChildFailed),
        types=_qualnames(ChildFailed),
        message=safe_text(str(exc), MESSAGE_CHARS),
        details={
            "child_run_id": child_run_id,
            "workflow": entry.name,
            "status": status,
            "error": stored,
        },
        traceback=None,
        retryable=False,
    )


def exception_for(entry: Entry) -> BaseException:
    """The exception thrown into workflow code for a failed entry."""
    error = entry.error_record or ErrorRecord("Exception")
    if entry.kind in ("approval", "event"):
        return TimedOut(name=entry.name, seq=entry.seq)
    if entry.kind in ("child", "start_child"):
        found = error.details
        details: dict[str, Any] = found if isinstance(found, dict) else {}
        return ChildFailed(
            error.message or None,
            child_run_id=details.get("child_run_id"),
            workflow=entry.name,
            seq=entry.seq,
            child_status=str(details.get("status") or "failed"),
            child_error=details.get("error"),
        )
    return StepFailed(
        step=entry.name,
        seq=entry.seq,
        error_type=error.type,
        error_types=error.types,
        error_message=error.message,
        details=error.details,
        attempts=entry.attempts,
        traceback=error.traceback,
        retryable=error.retryable,
    )
