"""Telemetry: squidmesh's loggers, lifecycle log lines, OpenTelemetry spans and metrics.

Everything here is derived from the lifecycle events of :mod:`squidmesh.runtime.events`
(delivered after commit) plus three hooks the core calls around code that runs: a step's
or compensation's function (its span is current while it runs, so the host's own spans
nest under it), the start of a delivered job (schedule-to-start latency), and the
creation of a run (the trace context stored with it).

OpenTelemetry is optional (``squidmesh[otel]``): only ``opentelemetry-api`` is imported,
on first use, and nothing is recorded until the host configures an SDK (a tracer
provider for spans, a meter provider for metrics); without one each hook costs a type
check. Spans of a run all join one trace: the context current when the run was created
(the ``squidmesh.start_run`` span, a child of the caller's span) is stored in the run
row, and every process parents the run's spans to it. A run stored without one (started
where no SDK was configured) gets a trace whose id is the run id.

Log lines (loggers ``squidmesh.step`` and ``squidmesh.run``) are emitted only where the
host configured logging: both loggers hold a ``NullHandler``, so Python's last-resort
handler never prints them. Every record of every squidmesh logger carries a
``squidmesh`` attribute (``extra["squidmesh"]``): a dict of the record's fields.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from importlib import metadata
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from squidmesh.runtime.events import ActivationSpan, LifecycleEvent, Sealed
from squidmesh.storage.base import Store
from squidmesh.types import RunStatus

__all__ = ["LOGGERS", "Telemetry", "Traced", "api_call", "fields_of"]

#: Every logger of the package, and what it logs (docs/observability.md shows this table;
#: tests/telemetry checks that the package uses no other).
LOGGERS: dict[str, str] = {
    "squidmesh": "the runtime: stale or postponed jobs, lost attempts, clock offsets, "
    "failing subscribers",
    "squidmesh.run": "one line per run created, per run status transition and per "
    "compensation (lifecycle events)",
    "squidmesh.step": "one line per step attempt start and end, with its outcome and "
    "duration (lifecycle events)",
    "squidmesh.workflow": "the workflow's own messages: sm.log(...)",
    "squidmesh.worker": "workers: start, drain, stop, jobs given back or parked, leases, "
    "heartbeats, timed-out step bodies",
    "squidmesh.sweeper": "runs found without any job and dispatched again (reactivated)",
    "squidmesh.cron": "the cron scheduler: election, ticks fired, catch-up",
    "squidmesh.outbox": "the outbox of the Celery and Procrastinate executors",
}

run_log = logging.getLogger("squidmesh.run")
step_log = logging.getLogger("squidmesh.step")
log = logging.getLogger("squidmesh")


class _Fields(logging.Filter):
    """Gives every record of a squidmesh logger a ``squidmesh`` dict (its fields), so
    handlers and formatters may rely on it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(getattr(record, "squidmesh", None), dict):
            record.squidmesh = {}
        return True


_FIELDS = _Fields()
for _name in LOGGERS:
    logging.getLogger(_name).addFilter(_FIELDS)
for _quiet in (run_log, step_log):
    # Lifecycle lines are for hosts that configure logging, never for the last resort.
    _quiet.addHandler(logging.NullHandler())


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The ``squidmesh`` fields of a log record (empty for other records)."""
    found = getattr(record, "squidmesh", None)
    return found if isinstance(found, dict) else {}


# --------------------------------------------------------------------------- log lines


def _error_text(error: Mapping[str, Any] | None) -> str:
    if not error:
        return "unknown error"
    kind = str(error.get("type") or "Error").rsplit(".", 1)[-1]
    message = str(error.get("message") or "")
    return f"{kind}: {message}" if message else kind


def _log_event(event: LifecycleEvent) -> None:
    kind = event.type
    if kind.startswith("step."):
        logger = step_log
        level = (
            logging.ERROR
            if kind == "step.failed"
            else logging.WARNING
            if kind == "step.retry_scheduled"
            else logging.INFO
        )
    else:
        logger = run_log
        level = logging.INFO
        if kind == "run.transition" and event.status == RunStatus.FAILED:
            level = logging.ERROR
        elif kind == "run.transition" and event.status == RunStatus.SUSPENDED:
            level = logging.WARNING
        elif kind == "run.compensation" and event.outcome == "failed":
            level = logging.ERROR
    if not logger.isEnabledFor(level):
        return
    logger.log(level, "%s", _message(event), extra={"squidmesh": event.fields()})


def _message(event: LifecycleEvent) -> str:
    kind, rid = event.type, event.run_id
    if kind.startswith("step."):
        head = f"step {event.workflow}.{event.step}[{rid}] seq {event.seq} attempt {event.attempt}"
        took = f" in {event.duration:.3f}s" if event.duration is not None else ""
        if kind == "step.started":
            return f"{head} started"
        if kind == "step.completed":
            return f"{head} completed{took}"
        if kind == "step.retry_scheduled":
            return (
                f"{head} failed{took} ({_error_text(event.error)}); attempt "
                f"{(event.attempt or 0) + 1} in {event.delay or 0:g}s"
            )
        return f"{head} failed{took} ({_error_text(event.error)}); the step failed"
    head = f"run {event.workflow}[{rid}]"
    if kind == "run.created":
        return f"{head} created (trigger {event.trigger})"
    if kind == "run.transition":
        return f"{head} {event.from_status} -> {event.status}"
    if event.outcome == "started":
        return f"{head} compensation started (run {event.status})"
    what = f"{head} compensation of {event.step} (seq {event.seq}) {event.outcome}"
    if event.outcome == "failed":
        return f"{what} ({_error_text(event.error)})"
    return what


# --------------------------------------------------------------------------- OpenTelemetry


class _Otel:
    """The parts of ``opentelemetry-api`` squidmesh uses, imported once."""

    def __init__(self) -> None:
        from opentelemetry import context, metrics, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.context = context
        self.metrics = metrics
        self.trace = trace
        self.propagator = TraceContextTextMapPropagator()
        self.no_tracer = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


_OTEL: _Otel | None = None
_OTEL_TRIED = False
_OTEL_LOCK = threading.Lock()


def _otel() -> _Otel | None:
    """The OpenTelemetry API, or None when ``squidmesh[otel]`` is not installed."""
    global _OTEL, _OTEL_TRIED
    if not _OTEL_TRIED:
        with _OTEL_LOCK:
            if not _OTEL_TRIED:
                try:
                    _OTEL = _Otel()
                except ImportError:
                    _OTEL = None
                _OTEL_TRIED = True
    return _OTEL


def _version() -> str:
    try:
        return metadata.version("squidmesh")
    except Exception:  # not installed as a distribution (a source checkout on sys.path)
        return "0"


#: seconds; the SDK's default buckets are made for milliseconds
_SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip


class _Instruments:
    def __init__(self, meter: Any) -> None:
        self.attempts = meter.create_counter(
            "squidmesh.step.attempts",
            unit="{attempt}",
            description="Step attempts that ended, by workflow, step and outcome "
            "(completed, retry, failed)",
        )
        self.duration = meter.create_histogram(
            "squidmesh.step.duration",
            unit="s",
            description="How long step attempts ran, by workflow, step and outcome",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self.transitions = meter.create_counter(
            "squidmesh.run.transitions",
            unit="{transition}",
            description="Runs entering a status (pending when created), by workflow and status",
        )
        self.schedule_to_start = meter.create_histogram(
            "squidmesh.job.schedule_to_start",
            unit="s",
            description="From the time a job was due to the time a worker began performing "
            "it, by job kind (activate, step, compensate)",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )


# One squidmesh.jobs.ready gauge per meter provider (a meter keeps the callbacks of the
# first registration of a name only); its callback observes every live Telemetry.
_GAUGED: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Telemetry]] = weakref.WeakKeyDictionary()
_GAUGE_LOCK = threading.Lock()


_Made = TypeVar("_Made")


def _from_host(provider: Any, records: str, make: Callable[[], _Made]) -> _Made | None:
    """What ``make`` gets from the host's OpenTelemetry ``provider``, or None when it
    raises: a misconfigured provider is the host's to fix, and costs its ``records``
    (until another provider is set), never a run. Each provider is asked once, so this
    is said once."""
    try:
        return make()
    except Exception as exc:
        log.warning(
            "squidmesh: the OpenTelemetry provider %r failed (%s: %s); squidmesh records no "
            "%s with it. Check the host's OpenTelemetry setup (docs/observability.md)",
            provider,
            type(exc).__name__,
            exc,
            records,
        )
        return None


def _register_gauge(provider: Any, meter: Any, telemetry: Telemetry) -> None:
    with _GAUGE_LOCK:
        members = _GAUGED.get(provider)
        if members is not None:
            members.add(telemetry)
            return
        members = weakref.WeakSet([telemetry])
        _GAUGED[provider] = members
    otel = _otel()
    assert otel is not None

    def observe(_options: Any) -> list[Any]:
        seen: dict[str, int] = {}
        for member in list(members):
            count = member.ready_jobs()
            if count is not None:
                seen[member.database] = count
        return [
            otel.metrics.Observation(count, {"squidmesh.database": database})
            for database, count in seen.items()
        ]

    meter.create_observable_gauge(
        "squidmesh.jobs.ready",
        callbacks=[observe],
        unit="{job}",
        description="Jobs due and not claimed by any worker (the backlog), per database",
    )

    def observe_queues(_options: Any) -> list[Any]:
        seen: dict[tuple[str, str, str], int] = {}
        for member in list(members):
            for queue, state, count in member.queue_jobs():
                seen[(member.database, queue, state)] = count
        return [
            otel.metrics.Observation(
                count,
                {
                    "squidmesh.database": database,
                    "squidmesh.queue": queue,
                    "squidmesh.queue.state": state,
                },
            )
            for (database, queue, state), count in seen.items()
        ]

    meter.create_observable_gauge(
        "squidmesh.queue.jobs",
        callbacks=[observe_queues],
        unit="{job}",
        description="Jobs of each flow-control queue holding a slot (state running) or "
        "waiting for one (state waiting), per database",
    )


def _no_meter(provider: Any) -> bool:
    otel = _otel()
    if otel is None:
        return True
    return isinstance(provider, otel.metrics.NoOpMeterProvider) or type(
        provider
    ).__name__.startswith("_Proxy")


class Telemetry:
    """The built-in observer of a Mesh's lifecycle events (see the module docstring).

    ``database`` labels the ``squidmesh.jobs.ready`` gauge; ``ready_jobs`` counts the
    jobs ready to run (None: this Mesh's executor keeps no jobs table).
    """

    def __init__(
        self,
        *,
        database: str,
        ready_jobs: Callable[[], int | None] | None = None,
        queue_jobs: Callable[[], list[tuple[str, str, int]]] | None = None,
    ) -> None:
        self.database = database
        self._ready_jobs = ready_jobs
        self._queue_jobs = queue_jobs
        self._closed = False
        self._version = _version()
        self._tracer_provider: Any = None
        self._tracer: Any = None
        self._meter_provider: Any = None
        self._instruments: _Instruments | None = None

    def close(self) -> None:
        self._closed = True

    def queue_jobs(self) -> list[tuple[str, str, int]]:
        """(queue, "running" | "waiting", count) for the ``squidmesh.queue.jobs`` gauge."""
        if self._closed or self._queue_jobs is None:
            return []
        try:
            return self._queue_jobs()
        except Exception as exc:
            log.debug("squidmesh: cannot count queued jobs for the gauge: %s", exc)
            return []

    def ready_jobs(self) -> int | None:
        """The gauge's observation for this Mesh (None when closed or not applicable)."""
        if self._closed or self._ready_jobs is None:
            return None
        try:
            return self._ready_jobs()
        except Exception as exc:  # the database is away: no observation this time
            log.debug("squidmesh: cannot count ready jobs for the gauge: %s", exc)
            return None

    # ------------------------------------------------------------------ providers

    @property
    def tracing(self) -> bool:
        """True while an OpenTelemetry SDK tracer provider is configured."""
        otel = _otel()
        if otel is None:
            return False
        provider = otel.trace.get_tracer_provider()
        if provider is not self._tracer_provider:
            self._tracer = (
                None
                if isinstance(provider, otel.no_tracer)
                else _from_host(
                    provider, "spans", lambda: provider.get_tracer("squidmesh", self._version)
                )
            )
            self._tracer_provider = provider
        return self._tracer is not None

    @property
    def wants_progress(self) -> bool:
        """Whether a step's start and successful end would be used: logged (their lines
        are INFO) or measured (a meter provider is configured)."""
        return step_log.isEnabledFor(logging.INFO) or self._meters() is not None

    def _meters(self) -> _Instruments | None:
        otel = _otel()
        if otel is None:
            return None
        provider = otel.metrics.get_meter_provider()
        if provider is not self._meter_provider:
            instruments = None
            if not _no_meter(provider):

                def instrument() -> _Instruments:
                    meter = provider.get_meter("squidmesh", self._version)
                    made = _Instruments(meter)
                    _register_gauge(provider, meter, self)
                    return made

                instruments = _from_host(provider, "metrics", instrument)
            self._instruments = instruments
            self._meter_provider = provider
        return self._instruments

    # ------------------------------------------------------------------ events

    def deliver(self, sealed: Sealed) -> None:
        """Log lines and metrics for the events, spans for the activations."""
        instruments = self._meters()
        for event in sealed.events:
            _log_event(event)
            if instruments is not None:
                _measure(instruments, event)
        if sealed.activations and self.tracing:
            for activation in sealed.activations:
                self._activation_span(activation)

    def job_started(
        self, kind: str, run_at: datetime | None, clock: Callable[[], datetime]
    ) -> None:
        instruments = self._meters()
        if instruments is None or run_at is None:
            return
        waited = (clock() - run_at).total_seconds()
        instruments.schedule_to_start.record(max(0.0, waited), {"squidmesh.job.kind": kind})

    # ------------------------------------------------------------------ spans

    def trace_context(self) -> dict[str, str] | None:
        """The current span's context as W3C headers (None when there is none)."""
        otel = _otel()
        if otel is None:
            return None
        if not otel.trace.get_current_span().get_span_context().is_valid:
            return None
        carrier: dict[str, str] = {}
        otel.propagator.inject(carrier)
        return carrier or None

    def _run_context(self, run_id: str, carrier: Mapping[str, str] | None) -> Any:
        """The context a run's spans are children of: the stored one, else a remote
        parent whose trace id is the run id."""
        otel = _otel()
        assert otel is not None
        trace = otel.trace
        if carrier:
            found = otel.propagator.extract(dict(carrier))
            if trace.get_current_span(found).get_span_context().is_valid:
                return found
        number = uuid.UUID(run_id).int
        parent = trace.SpanContext(
            trace_id=number,
            span_id=(number & 0xFFFF_FFFF_FFFF_FFFF) or 1,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(parent))

    @contextlib.contextmanager
    def step_span(self, run: Any, kind: str, step: str, seq: int, attempt: int) -> Iterator[Any]:
        """``squidmesh.step <name>`` (or ``squidmesh.compensate <name>``), current while
        the function runs; an exception sets ERROR and is recorded."""
        if not self.tracing:
            yield None
            return
        attributes = {
            "squidmesh.run_id": run.id,
            "squidmesh.workflow": run.workflow,
            "squidmesh.trigger": run.trigger,
            "squidmesh.step": step,
            "squidmesh.seq": seq,
            "squidmesh.attempt": attempt,
        }
        with self._tracer.start_as_current_span(
            f"squidmesh.{kind} {step}",
            context=self._run_context(run.id, run.trace_context),
            attributes=attributes,
        ) as span:
            yield span

    def _activation_span(self, activation: ActivationSpan) -> None:
        otel = _otel()
        assert otel is not None
        span = self._tracer.start_span(
            f"squidmesh.activate {activation.workflow}",
            context=self._run_context(activation.run_id, activation.trace_context),
            start_time=activation.start_ns,
            attributes={
                "squidmesh.run_id": activation.run_id,
                "squidmesh.workflow": activation.workflow,
                "squidmesh.trigger": activation.trigger,
                "squidmesh.outcome": activation.outcome,
            },
        )
        if activation.outcome in ("failed", "suspended"):
            error = activation.error
            text = _error_text(error.to_json() if error is not None else None)
            span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, text))
            span.add_event(
                "exception",
                {
                    "exception.type": error.type if error is not None else "",
                    "exception.message": error.message if error is not None else "",
                    "exception.stacktrace": (error.traceback or "") if error is not None else "",
                },
            )
        span.end(end_time=max(activation.end_ns, activation.start_ns))

    @contextlib.contextmanager
    def api_span(
        self, name: str, store: Store, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Iterator[Any]:
        """``squidmesh.<method>``: a child of the caller's current span; a call on an
        existing run without one joins the run's trace (and links to it otherwise)."""
        otel = _otel()
        assert otel is not None
        trace = otel.trace
        attributes: dict[str, Any] = {"squidmesh.api": name}
        run_id = kwargs.get("run_id", args[0] if args else None)
        parent: Any = None
        links: list[Any] = []
        if name in ("start_run", "fire_cron"):
            workflow = kwargs.get("workflow", args[0] if args else None)
            attributes["squidmesh.workflow"] = str(getattr(workflow, "name", workflow))
        else:
            carrier, rid = _stored_context(store, run_id)
            if rid is not None:
                attributes["squidmesh.run_id"] = rid
                run_context = self._run_context(rid, carrier)
                if trace.get_current_span().get_span_context().is_valid:
                    links.append(trace.Link(trace.get_current_span(run_context).get_span_context()))
                else:
                    parent = run_context
        with self._tracer.start_as_current_span(
            f"squidmesh.{name}", context=parent, attributes=attributes, links=links
        ) as span:
            yield span

    @staticmethod
    def describe(span: Any, result: Any) -> None:
        """Name the run an API call returned on its span."""
        for attribute, field in (
            ("squidmesh.run_id", "id"),
            ("squidmesh.workflow", "workflow"),
            ("squidmesh.trigger", "trigger"),
            ("squidmesh.status", "status"),
        ):
            value = getattr(result, field, None)
            if value is not None:
                span.set_attribute(attribute, str(value))


def _measure(instruments: _Instruments, event: LifecycleEvent) -> None:
    kind = event.type
    if kind in ("step.completed", "step.retry_scheduled", "step.failed"):
        attributes = {
            "squidmesh.workflow": event.workflow,
            "squidmesh.step": event.step or "",
            "squidmesh.outcome": event.outcome or "",
        }
        instruments.attempts.add(1, attributes)
        if event.duration is not None:
            instruments.duration.record(event.duration, attributes)
    elif kind in ("run.created", "run.transition"):
        instruments.transitions.add(
            1, {"squidmesh.workflow": event.workflow, "squidmesh.status": event.status}
        )


def _stored_context(store: Store, run_id: Any) -> tuple[Mapping[str, str] | None, str | None]:
    """The trace context stored with ``run_id`` (one read; nothing when it cannot be had:
    the call itself then reports the problem)."""
    try:
        rid = str(uuid.UUID(str(run_id)))
    except (ValueError, TypeError, AttributeError):
        return None, None
    try:
        with store.transaction() as tx:
            run = tx.get_run(rid)
    except Exception:
        return None, rid
    return (run.trace_context if run is not None else None), rid


# --------------------------------------------------------------------------- API calls

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Traced(Protocol):
    """What ``api_call`` uses of the object whose methods it traces."""

    @property
    def telemetry(self) -> Telemetry | None:
        """Where the spans go; None when ``Mesh(telemetry=False)``."""

    @property
    def store(self) -> Store:
        """Where a call on an existing run finds the trace context stored with it."""


_T = TypeVar("_T", bound=Traced)


def api_call(method: Callable[Concatenate[_T, _P], _R]) -> Callable[Concatenate[_T, _P], _R]:
    """A span per call of a ``Mesh`` method that changes a run (``squidmesh.<name>``);
    a plain call when telemetry is off or no SDK is configured."""
    name = method.__name__

    @functools.wraps(method)
    def traced(self: _T, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        telemetry = self.telemetry
        if telemetry is None or not telemetry.tracing:
            return method(self, *args, **kwargs)
        with telemetry.api_span(name, self.store, args, kwargs) as span:
            result = method(self, *args, **kwargs)
            telemetry.describe(span, result)
            return result

    return traced
