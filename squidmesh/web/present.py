"""Words, times and values as the console shows them.

Everything here returns plain text; the templates escape it. ``scrub`` removes the
server's own directories from text (tracebacks, file:line of graph nodes, error
messages), so a page never shows an absolute server path: a file under the project, a
``sys.path`` entry or the interpreter's prefix is shown relative to it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from squidmesh.runtime.views import Explanation

__all__ = [
    "ACTION_LABELS",
    "DONE",
    "OPERATOR_ACTIONS",
    "WAIT_ACTIONS",
    "duration",
    "explanation_sentence",
    "json_text",
    "scrub",
    "short_id",
    "timestamp",
    "value_text",
]

#: The next actions a person takes through a control (the rest are waits).
OPERATOR_ACTIONS = (
    "approve_run",
    "reject_run",
    "unblock_run",
    "send_event",
    "resume_run",
    "fork_run",
    "replay_run",
    "cancel_run",
)

ACTION_LABELS = {
    "approve_run": "Approve",
    "reject_run": "Reject",
    "unblock_run": "Unblock",
    "send_event": "Send event",
    "cancel_run": "Cancel run",
    "resume_run": "Resume",
    "replay_run": "Replay",
    "fork_run": "Fork",
}

#: What the run page says after an action succeeded (``?done=<action>``).
DONE = {
    "approve_run": "Approved.",
    "reject_run": "Rejected.",
    "unblock_run": "Unblocked.",
    "send_event": "Event sent.",
    "cancel_run": "Cancellation requested.",
    "resume_run": "Resumed.",
    "replay_run": "This run is the replay you started.",
    "fork_run": "This run is the fork you made.",
    "start_run": "Run started.",
}

WAIT_ACTIONS = {
    "wait_for_retry": "wait for the retry",
    "wait_for_step": "wait for the step (a worker runs it)",
    "wait_for_timer": "wait for the timer",
    "wait_for_event": "wait for the event",
    "wait_for_cancellation": "wait for the step in flight to finish, then the run ends",
}

#: Characters of a JSON value shown before it is cut (the rest is one click away in the API).
JSON_LIMIT = 20_000


def _roots() -> list[str]:
    """Directories whose paths are shown relative: the working directory, the
    interpreter's prefixes, ``sys.path`` and the folders holding each imported
    top-level package (which covers editable installs and ``--app`` projects)."""
    found = {os.getcwd(), sys.prefix, sys.exec_prefix, *sys.path}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if "." in name or not isinstance(file, str) or not os.path.isabs(file):
            continue
        folder = os.path.dirname(file)
        found.add(os.path.dirname(folder) if file.endswith("__init__.py") else folder)
    roots = {os.path.abspath(p).rstrip(os.sep) for p in found if p and os.path.isabs(p)}
    # Deepest first, so a path is made relative to the closest root.
    return sorted((r for r in roots if len(r) > 1), key=len, reverse=True)


_PATTERN: tuple[int, re.Pattern[str]] | None = None
# A last resort for source files outside every root: keep only the file's name.
_PY_FILE = re.compile(r"(?<![\w.:/~])(?:/[^/\s\"'<>]+)+/([^/\s\"'<>]+\.py)\b")


def _pattern() -> re.Pattern[str]:
    global _PATTERN
    modules = len(sys.modules)
    if _PATTERN is None or _PATTERN[0] != modules:
        alternatives = "|".join(re.escape(root + os.sep) for root in _roots())
        # With no root at all, a pattern that never matches.
        _PATTERN = (modules, re.compile(alternatives or r"(?!x)x"))
    return _PATTERN[1]


def scrub(text: str) -> str:
    """``text`` with the server's directories removed from absolute paths in it."""
    if os.sep not in text:
        return text
    text = _pattern().sub("", text)
    home = os.path.expanduser("~")
    if len(home) > 1:
        text = text.replace(home + os.sep, "~" + os.sep)
    return _PY_FILE.sub(r"\1", text)


def value_text(value: Any) -> str:
    """A detail's value as a line of text: instants as timestamps, the rest as is."""
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and "T" in value:
        moment = _as_datetime(value)
        if moment is not None:
            return timestamp(moment)
    return scrub(str(value))


def short_id(run_id: object) -> str:
    return str(run_id)[:8]


def _as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def timestamp(value: datetime | str | None) -> str:
    """``2030-01-01 09:00:05 UTC`` (seconds; milliseconds when there are any)."""
    moment = _as_datetime(value)
    if moment is None:
        return "" if value is None else str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond // 1000:03d}"
    return text + " UTC"


def iso(value: datetime | str | None) -> str:
    moment = _as_datetime(value)
    return moment.isoformat() if moment is not None else ""


def duration(start: datetime | str | None, end: datetime | str | None) -> str:
    """The time between two instants, as ``350 ms``, ``4.2 s`` or ``3 min 5 s``."""
    first, last = _as_datetime(start), _as_datetime(end)
    if first is None or last is None:
        return ""
    seconds = (last - first).total_seconds()
    if seconds < 0:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def json_text(value: Any, *, limit: int = JSON_LIMIT) -> str:
    """Indented JSON (non-JSON values by their ``str``), cut after ``limit`` characters."""
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit:,} more characters)"
    return scrub(text)


def _names(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _when(value: Any) -> str:
    return timestamp(value) if value else "no time set"


def explanation_sentence(why: Explanation, workflow: str) -> str:
    """``explain_run``'s reason in words, with the facts that matter most."""
    d: Mapping[str, Any] = why.details
    step = why.step or "?"
    reason = why.reason
    if reason == "completed":
        return "The run completed."
    if reason == "cancelled":
        return "The run was cancelled."
    if reason == "retry_exhausted":
        return (
            f"Step {step} failed {d.get('latest_attempt_number', '?')} time(s), its whole "
            f"retry budget ({d.get('max_attempts', '?')} attempts): the run failed."
        )
    if reason == "step_failed":
        return (
            f"Step {step} failed with an error that is not retried "
            f"(attempt {d.get('latest_attempt_number', '?')} of {d.get('max_attempts', '?')}): "
            "the run failed."
        )
    if reason == "workflow_failed":
        return "The workflow code ended the run as failed (sm.Fail or an uncaught exception)."
    if reason == "compensation_failed":
        return "The run failed, and compensating its completed steps failed too."
    if reason == "waiting_for_retry":
        return (
            f"Step {step} failed; attempt {d.get('next_attempt_number', '?')} of "
            f"{d.get('max_attempts', '?')} is due at {_when(d.get('next_attempt_at'))}."
        )
    if reason == "waiting_for_cancellation":
        flight = _names(d.get("in_flight") or []) or "a step"
        return f"Cancellation was requested; waiting for {flight} in flight to finish."
    if reason == "paused_for_manual_action":
        why_paused = f" ({d['reason']})" if d.get("reason") else ""
        return f"Paused at {step}{why_paused}: an operator unblocks it to go on."
    if reason == "paused_for_approval":
        timeout = f" It times out at {timestamp(d['timeout_at'])}." if d.get("timeout_at") else ""
        return f"Waiting for a decision on approval {step}: approve or reject it.{timeout}"
    if reason == "nondeterminism":
        return (
            "Suspended: the workflow code no longer yields what the history recorded. "
            "Restore the old code path (or guard the change with sm.patched), deploy, "
            "then resume."
        )
    if reason == "workflow_error":
        return (
            "Suspended: the workflow code raised an exception outside a step. Fix the "
            "code, deploy, then resume: recorded steps are not run again."
        )
    if reason == "workflow_unavailable":
        return (
            f"This console's Mesh has no workflow named {workflow}: register it to see "
            "its graph and act on the run."
        )
    if reason == "waiting_for_timer":
        return f"Sleeping until {_when(d.get('wake_at'))}."
    if reason == "waiting_for_event":
        buffered = d.get("buffered_events") or 0
        extra = f" ({buffered} other event(s) buffered)" if buffered else ""
        timeout = f", until {timestamp(d['timeout_at'])}" if d.get("timeout_at") else ""
        return f"Waiting for event {d.get('event', step)}{timeout}{extra}."
    if reason == "waiting_for_join":
        branches = d.get("branches") or []
        done = sum(1 for b in branches if b.get("status") == "completed")
        limit = f", at most {d['limit']} at a time" if d.get("limit") else ""
        return f"Waiting for parallel branches: {done} of {len(branches)} done{limit}."
    if reason == "waiting_for_child":
        own = d.get("child_reason")
        why_child = f" ({own.replace('_', ' ')})" if isinstance(own, str) else ""
        return f"Waiting for child run {d.get('child_run_id', '?')} of {step}{why_child}."
    if reason == "continued_as_new":
        return f"The run continued as a new run, {d.get('continued_as_run_id', '?')}."
    if reason == "step_scheduled":
        return f"Step {step} is scheduled (attempt {d.get('attempt', '?')}); a worker picks it up."
    if reason == "step_running":
        return f"Step {step} is running (attempt {d.get('attempt', '?')})."
    if reason == "compensating":
        pending = _names(d.get("pending") or [])
        return "Compensating completed steps" + (f" ({pending})." if pending else ".")
    if reason == "pending_dispatch":
        return "Waiting for a worker to pick the run up."
    if reason in ("queued", "rate_limited"):
        caps: Mapping[str, Any] = d.get("limit") or {}
        limits = [
            f"{name.replace('_', ' ')} {caps[name]}"
            for name in ("concurrency", "key_concurrency")
            if caps.get(name) is not None
        ]
        rate = caps.get("rate")
        if isinstance(rate, dict):
            limits.append(f"rate {rate.get('limit')} per {rate.get('per')}s")
        place = f"position {d['position']}" if d.get("position") else None
        counts = f"{d.get('running', '?')} running, {d.get('waiting', '?')} waiting"
        facts = ", ".join(x for x in (place, counts) if x)
        subject = f"Step {why.step}" if why.step else "The run"
        key = f" (key {d['key']})" if d.get("key") is not None else ""
        why_wait = "its rate window is full" if reason == "rate_limited" else "a slot"
        return f"{subject} waits for queue {d.get('queue', '?')}{key}: {why_wait}; {facts}" + (
            f"; limits: {', '.join(limits)}." if limits else "."
        )
    if reason == "scheduled_start":
        return f"The run starts at {_when(d.get('start_at'))}."
    if reason == "debouncing":
        bound = d.get("max_wait_until")
        return f"Debouncing {d.get('key', '?')}: the run starts at {_when(d.get('start_at'))}" + (
            f" (at the latest {_when(bound)})." if bound else "."
        )
    if reason == "deadline_exceeded":
        return f"Cancelled at its deadline, {_when(d.get('deadline'))}."
    return f"{why.status.value}: {reason.replace('_', ' ')}."
