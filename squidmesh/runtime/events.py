"""Lifecycle events: what changed in a run, told after the change committed.

This module is the one seam between the execution core and everything that observes it
(``mesh.subscribe`` callbacks, the lifecycle log lines, OpenTelemetry). The core reports
facts at a handful of named points, each a one-line call on the transaction's
:class:`Recorder` (``ch.events``):

==========================  ===================================================================
``run_created(run)``         a run row was inserted (``start_run``, ``fire_cron``, replay, fork)
``step_started(...)``        an attempt of a step was begun (recorded ``running``)
``step_ended(...)``          an attempt's outcome was recorded: completed, failed for good,
                             or failed with another attempt scheduled (``retry_in``)
``compensation(...)``        a rollback began (``started``), or one compensation finished
``activated(...)``           the workflow code ran (an interpreter advance); spans only
==========================  ===================================================================

``run.transition`` events are not reported by the core: :meth:`Recorder.seal` derives them
from the status each run had when the transaction read it and the status it writes.

Nothing is delivered inside the transaction. ``Engine.change()`` seals the recorder just
before commit (so every event carries the run's status as committed) and, once the
commit succeeded, hands the sealed events to :meth:`EventBus.publish`; a rolled-back
transaction's events are dropped with it. Subscribers run synchronously in the thread
that committed, in subscription order; one that raises is logged (logger ``squidmesh``)
and changes nothing: the run, the other subscribers and the API call that committed
are unaffected.

When nobody listens (``Mesh(telemetry=False)`` and no subscriber) the recorder's methods
return at once, so the core pays one attribute test per fact. A step's start and its
successful end are the two facts of every step; when no subscriber listens and the
telemetry would drop them (``Observer.wants_progress``: their log lines are INFO, and no
meter provider counts them), they are not recorded either. Building them was about a
tenth of a job thread's time on an SQLite step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from squidmesh.core.records import ErrorRecord

__all__ = [
    "EVENT_TYPES",
    "ActivationSpan",
    "EventBus",
    "LifecycleEvent",
    "Observer",
    "Recorder",
    "Sealed",
]

log = logging.getLogger("squidmesh")

#: every ``LifecycleEvent.type``, in the order a run usually meets them
EVENT_TYPES = (
    "run.created",
    "run.transition",
    "step.started",
    "step.completed",
    "step.failed",
    "step.retry_scheduled",
    "run.compensation",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LifecycleEvent:
    """One thing that happened to a run, delivered to ``mesh.subscribe`` callbacks after
    the transaction that recorded it committed.

    ``status`` is the run's status as that transaction left it. Step events name the
    step, its history position ``seq`` and the ``attempt`` number; an attempt's end
    (``step.completed``, ``step.retry_scheduled``, ``step.failed``) carries its
    ``duration`` in seconds, and a failure its ``error`` (``type``, ``message``, ...).
    ``run.transition`` carries ``from_status``; ``step.retry_scheduled`` the ``delay``
    (seconds) before the next attempt is due. ``outcome`` is ``completed``, ``retry`` or
    ``failed`` for an attempt's end, and ``started``, ``completed`` or ``failed`` for
    ``run.compensation``. ``at`` is when it happened (the database's clock on
    PostgreSQL).
    """

    type: str
    run_id: uuid.UUID
    workflow: str
    trigger: str
    status: str
    step: str | None = None
    seq: int | None = None
    attempt: int | None = None
    duration: float | None = None
    error: Mapping[str, Any] | None = None
    at: datetime
    from_status: str | None = None
    delay: float | None = None
    outcome: str | None = None

    def fields(self) -> dict[str, Any]:
        """The event as JSON-friendly fields (what log records carry in ``squidmesh``)."""
        out: dict[str, Any] = {
            "event": self.type,
            "run_id": str(self.run_id),
            "workflow": self.workflow,
            "trigger": self.trigger,
            "status": self.status,
            "at": self.at.isoformat(),
        }
        for name in ("step", "seq", "attempt", "duration", "from_status", "delay", "outcome"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.error is not None:
            out["error"] = {k: v for k, v in self.error.items() if k != "traceback"}
        return out


@dataclasses.dataclass(frozen=True)
class ActivationSpan:
    """The workflow code of a run ran (one interpreter advance): for tracing only."""

    run_id: str
    workflow: str
    trigger: str
    trace_context: Mapping[str, str] | None
    #: wall-clock nanoseconds (OpenTelemetry's unit), start and end
    start_ns: int
    end_ns: int
    #: the advance's outcome: waiting, completed, failed, suspended, cancelled
    outcome: str
    error: ErrorRecord | None


@dataclasses.dataclass(frozen=True)
class Sealed:
    """What one committed transaction tells: lifecycle events and activation spans."""

    events: tuple[LifecycleEvent, ...] = ()
    activations: tuple[ActivationSpan, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.events or self.activations)


class Observer(Protocol):
    """The built-in telemetry (``squidmesh.runtime.telemetry``) as the bus sees it."""

    #: True while spans are worth recording (an OpenTelemetry SDK is configured)
    @property
    def tracing(self) -> bool: ...

    #: True while a step's start and successful end would be used (logged or measured)
    @property
    def wants_progress(self) -> bool: ...

    def deliver(self, sealed: Sealed) -> None: ...

    def step_span(
        self, run: Any, kind: str, step: str, seq: int, attempt: int
    ) -> contextlib.AbstractContextManager[Any]: ...

    def job_started(
        self, kind: str, run_at: datetime | None, clock: Callable[[], datetime]
    ) -> None: ...

    def trace_context(self) -> dict[str, str] | None: ...


class EventBus:
    """Delivers sealed events to the subscribers and the telemetry, after commit."""

    def __init__(self, observer: Observer | None = None) -> None:
        #: the built-in telemetry (log lines, spans, metrics); None: turned off
        self.observer = observer
        # Copy on write: publishing iterates without a lock while others subscribe.
        self._subscribers: tuple[Callable[[LifecycleEvent], object], ...] = ()
        self._lock = threading.Lock()

    @property
    def listening(self) -> bool:
        """Whether anything wants events (else recording them is skipped)."""
        return self.observer is not None or bool(self._subscribers)

    @property
    def tracing(self) -> bool:
        return self.observer is not None and self.observer.tracing

    def subscribe(self, callback: Callable[[LifecycleEvent], object]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event from now on; returns an unsubscribe
        function (calling it twice is harmless)."""
        if not callable(callback):
            from squidmesh.errors import InvalidArgumentError, shown

            raise InvalidArgumentError(
                f"subscribe takes a callable (called with each LifecycleEvent), got "
                f"{shown(callback)}"
            )
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                found = list(self._subscribers)
                if callback in found:
                    found.remove(callback)
                    self._subscribers = tuple(found)

        return unsubscribe

    def recorder(self) -> Recorder:
        """A recorder for one transaction (inert when nothing listens)."""
        observer = self.observer
        progress = bool(self._subscribers) or (observer is not None and observer.wants_progress)
        return Recorder(self.listening, self.tracing, progress=progress)

    def publish(self, sealed: Sealed) -> None:
        """Deliver what a committed transaction told. Never raises (but BaseException)."""
        if not sealed:
            return
        observer = self.observer
        if observer is not None:
            try:
                observer.deliver(sealed)
            except Exception:
                log.exception("squidmesh: the telemetry failed on %d event(s)", len(sealed.events))
        for callback in self._subscribers:
            for event in sealed.events:
                try:
                    callback(event)
                except Exception:
                    log.exception(
                        "squidmesh: lifecycle subscriber %r failed on %s of run %s (seq %s); "
                        "the run is unaffected, fix the callback",
                        callback,
                        event.type,
                        event.run_id,
                        event.seq,
                    )

    # ------------------------------------------------------------------ around code

    def step_span(
        self, run: Any, step: str, seq: int, attempt: int, *, kind: str = "step"
    ) -> contextlib.AbstractContextManager[Any]:
        """Wraps the call of a step's (or compensation's) function: its span, current
        while the function runs so the host's own spans nest under it."""
        observer = self.observer
        if observer is None or not observer.tracing:
            return contextlib.nullcontext()
        return observer.step_span(run, kind, step, seq, attempt)

    def job_started(
        self, kind: str, run_at: datetime | None, clock: Callable[[], datetime]
    ) -> None:
        """A delivered job begins to be performed (``squidmesh.job.schedule_to_start``);
        ``clock`` is read only when the metric is recorded."""
        if self.observer is not None:
            self.observer.job_started(kind, run_at, clock)

    def trace_context(self) -> dict[str, str] | None:
        """The current trace context as W3C headers, to store with a new run."""
        observer = self.observer
        if observer is None or not observer.tracing:
            return None
        return observer.trace_context()


def _seconds(start: datetime | str | None, end: datetime | str | None) -> float | None:
    if start is None or end is None:
        return None
    a = datetime.fromisoformat(start) if isinstance(start, str) else start
    b = datetime.fromisoformat(end) if isinstance(end, str) else end
    return round(max(0.0, (b - a).total_seconds()), 6)


def _when(value: datetime | str) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


class Recorder:
    """The facts one transaction reports (``Change.events``), sealed before commit.

    ``run`` arguments are the run rows the transaction writes (anything with ``id``,
    ``workflow``, ``trigger``, ``status`` and ``trace_context``): an event takes the
    run's status when sealed, i.e. as committed.
    """

    __slots__ = ("_activations", "_facts", "on", "progress", "tracing")

    def __init__(self, on: bool, tracing: bool = False, *, progress: bool = True) -> None:
        self.on = on
        self.tracing = tracing
        #: whether a step's start and successful end are recorded (the module says why)
        self.progress = on and progress
        self._facts: list[tuple[str, Any, dict[str, Any]]] = []
        self._activations: list[tuple[Any, int, int, str, Any]] = []

    def run_created(self, run: Any, at: datetime) -> None:
        if self.on:
            self._facts.append(("run.created", run, {"at": at}))

    def step_started(self, run: Any, step: str, seq: int, attempt: int, at: datetime | str) -> None:
        if self.progress:
            self._facts.append(
                ("step.started", run, {"step": step, "seq": seq, "attempt": attempt, "at": at})
            )

    def step_ended(
        self,
        run: Any,
        step: str,
        seq: int,
        attempt: int,
        started: datetime | str | None,
        at: datetime | str,
        *,
        error: ErrorRecord | None = None,
        retry_in: float | None = None,
    ) -> None:
        """Attempt ``attempt`` ended: completed (no ``error``), failed with another
        attempt due in ``retry_in`` seconds, or failed for good (``retry_in`` None)."""
        if not self.on or (error is None and not self.progress):
            return
        if error is None:
            kind, outcome = "step.completed", "completed"
        elif retry_in is not None:
            kind, outcome = "step.retry_scheduled", "retry"
        else:
            kind, outcome = "step.failed", "failed"
        self._facts.append(
            (
                kind,
                run,
                {
                    "step": step,
                    "seq": seq,
                    "attempt": attempt,
                    "at": at,
                    "duration": _seconds(started, at),
                    "error": error,
                    "delay": retry_in,
                    "outcome": outcome,
                },
            )
        )

    def compensation(
        self,
        run: Any,
        outcome: str,
        at: datetime,
        *,
        step: str | None = None,
        seq: int | None = None,
        started: datetime | None = None,
        error: ErrorRecord | None = None,
    ) -> None:
        """A rollback began (``outcome="started"``), or the compensation of ``step``
        ended (``completed``/``failed``, begun at ``started``)."""
        if self.on:
            self._facts.append(
                (
                    "run.compensation",
                    run,
                    {
                        "step": step,
                        "seq": seq,
                        "at": at,
                        "outcome": outcome,
                        "error": error,
                        "duration": _seconds(started, at),
                    },
                )
            )

    def activated(self, run: Any, start_ns: int, outcome: str, error: ErrorRecord | None) -> None:
        """The workflow code of ``run`` ran from ``start_ns`` until now."""
        if self.tracing:
            self._activations.append((run, start_ns, time.time_ns(), outcome, error))

    def seal(self, read: Mapping[str, Any], written: Iterable[Any]) -> Sealed:
        """The events, with each run's status as this transaction leaves it, followed
        by a ``run.transition`` for each run whose status changed (the transaction's
        net effect, so it comes last). ``read`` maps run ids to the rows as read."""
        if not self.on:
            return _EMPTY
        events: list[LifecycleEvent] = []
        ids: dict[str, uuid.UUID] = {}

        def rid(run_id: str) -> uuid.UUID:
            found = ids.get(run_id)
            if found is None:
                found = ids[run_id] = uuid.UUID(run_id)
            return found

        for kind, run, fields in self._facts:
            events.append(
                LifecycleEvent(
                    type=kind,
                    run_id=rid(run.id),
                    workflow=run.workflow,
                    trigger=run.trigger,
                    status=run.status,
                    step=fields.get("step"),
                    seq=fields.get("seq"),
                    attempt=fields.get("attempt"),
                    duration=fields.get("duration"),
                    error=error.to_json() if (error := fields.get("error")) is not None else None,
                    at=_when(fields["at"]),
                    delay=fields.get("delay"),
                    outcome=fields.get("outcome"),
                )
            )
        for run in written:
            before = read.get(run.id)
            if before is None or before.status == run.status:
                continue
            events.append(
                LifecycleEvent(
                    type="run.transition",
                    run_id=rid(run.id),
                    workflow=run.workflow,
                    trigger=run.trigger,
                    status=run.status,
                    from_status=before.status,
                    at=run.updated_at,
                )
            )
        activations = tuple(
            ActivationSpan(
                run.id,
                run.workflow,
                run.trigger,
                run.trace_context,
                start,
                end,
                outcome,
                error,
            )
            for run, start, end, outcome, error in self._activations
        )
        return Sealed(tuple(events), activations)


_EMPTY = Sealed()
