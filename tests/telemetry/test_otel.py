from __future__ import annotations

# OpenTelemetry spans and metrics (SPEC section 14), read back from the SDK's in-memory
# span exporter and metric reader: one trace per run under the span current at
# start_run, a span per step attempt (current while the step runs), per activation and
# per API call that changes a run; ERROR status on failures; the five metrics.
import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode

import squidmesh as sm
from tests.runtime.support import MeshFactory
from tests.support.waiting import wait_for
from tests.telemetry.conftest import Otel, reset_globals

SHAKY: dict[str, int] = {}


def _host_span(name: str) -> None:
    """What an instrumented HTTP client would do inside a step."""
    with trace.get_tracer("host").start_as_current_span(name):
        pass


@sm.step
def fetch(n: int) -> int:
    _host_span("GET /fetch")
    return n * 2


@sm.step(timeout=30)  # runs in a helper thread (so a timeout can stop waiting for it)
def fetch_in_thread(n: int) -> int:
    _host_span("GET /thread")
    return n * 3


@sm.step
async def fetch_async(n: int) -> int:
    _host_span("GET /async")
    return n * 4


@sm.step(retry=sm.Retry(max_attempts=2, backoff=sm.Backoff.fixed(1)))
def shaky() -> str:
    SHAKY["n"] = SHAKY.get("n", 0) + 1
    if SHAKY["n"] == 1:
        raise ConnectionError("reset by peer")
    return "ok"


@sm.workflow
def pipeline():
    a = yield fetch(1)
    b = yield fetch_in_thread(2)
    c = yield fetch_async(3)
    yield shaky()
    return a + b + c


@sm.workflow
def gate():
    yield sm.approval("go")
    return (yield fetch(5))


@sm.workflow
def broken():
    yield fetch(1)
    raise RuntimeError("a bug in the workflow")


@pytest.fixture(autouse=True)
def _reset() -> None:
    SHAKY.clear()


def _attributes(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def _run_all(mesh: sm.Mesh, factory: MeshFactory) -> None:
    mesh.drain()
    factory.clock.advance(1)
    mesh.drain()


def test_a_run_is_one_trace_under_the_span_current_at_start_run(
    otel: Otel, factory: MeshFactory
) -> None:
    mesh = factory([pipeline], executor="database")
    with otel.tracer.start_as_current_span("POST /orders") as request:
        run = mesh.start_run(pipeline)
    # The worker's part happens later, with no span current: it joins the run's trace.
    _run_all(mesh, factory)
    assert mesh.inspect_run(run.id).status == "completed"

    trace_id = request.get_span_context().trace_id
    spans = otel.spans()
    assert {s.context.trace_id for s in spans} == {trace_id}
    (start,) = otel.named("squidmesh.start_run")
    assert start.parent is not None and start.parent.span_id == request.get_span_context().span_id
    assert _attributes(start)["squidmesh.run_id"] == str(run.id)
    assert _attributes(start)["squidmesh.workflow"] == "pipeline"

    steps = otel.named("squidmesh.step ")
    assert [s.name for s in steps] == [
        "squidmesh.step fetch",
        "squidmesh.step fetch_in_thread",
        "squidmesh.step fetch_async",
        "squidmesh.step shaky",
        "squidmesh.step shaky",
    ]
    activations = otel.named("squidmesh.activate ")
    assert activations and {a.name for a in activations} == {"squidmesh.activate pipeline"}
    for span in [*steps, *activations]:
        assert span.parent is not None and span.parent.span_id == start.context.span_id
        attrs = _attributes(span)
        assert attrs["squidmesh.run_id"] == str(run.id)
        assert (attrs["squidmesh.workflow"], attrs["squidmesh.trigger"]) == ("pipeline", "manual")
    assert [
        (_attributes(s)["squidmesh.seq"], _attributes(s)["squidmesh.attempt"]) for s in steps
    ] == [
        (0, 1),
        (1, 1),
        (2, 1),
        (3, 1),
        (3, 2),
    ]
    assert _attributes(activations[-1])["squidmesh.outcome"] == "completed"

    # The step span is current while the step runs: sync, in a helper thread, async.
    for host, step in (
        ("GET /fetch", steps[0]),
        ("GET /thread", steps[1]),
        ("GET /async", steps[2]),
    ):
        (inner,) = otel.named(host)
        assert inner.parent is not None and inner.parent.span_id == step.context.span_id

    failed, retried = steps[3], steps[4]
    assert failed.status.status_code is StatusCode.ERROR
    (exception,) = [e for e in failed.events if e.name == "exception"]
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "ConnectionError"
    assert exception.attributes["exception.message"] == "reset by peer"
    assert retried.status.status_code is not StatusCode.ERROR


def test_a_run_started_without_a_span_is_its_own_trace(otel: Otel, factory: MeshFactory) -> None:
    mesh = factory([pipeline], executor="database")
    run = mesh.start_run(pipeline)
    _run_all(mesh, factory)
    (start,) = otel.named("squidmesh.start_run")
    assert start.parent is None  # the root of the run's trace
    assert {s.context.trace_id for s in otel.spans()} == {start.context.trace_id}
    assert mesh.inspect_run(run.id).status == "completed"


def test_api_calls_on_a_run_join_its_trace_or_link_to_it(otel: Otel, factory: MeshFactory) -> None:
    mesh = factory([gate], executor="database")
    first = mesh.start_run(gate)
    second = mesh.start_run(gate)
    mesh.drain()
    starts = {_attributes(s)["squidmesh.run_id"]: s for s in otel.named("squidmesh.start_run")}

    # No span current (a CLI, a console without instrumentation): the call joins the run's
    # trace, under the span that started it.
    mesh.approve_run(first.id, actor="alice")
    (approve,) = otel.named("squidmesh.approve_run")
    root = starts[str(first.id)]
    assert approve.context.trace_id == root.context.trace_id
    assert approve.parent is not None and approve.parent.span_id == root.context.span_id
    assert _attributes(approve)["squidmesh.run_id"] == str(first.id)
    assert _attributes(approve)["squidmesh.status"] == "running"

    # Within a request's span: the call is the request's child, linked to the run's trace.
    with otel.tracer.start_as_current_span("POST /approve") as request:
        mesh.approve_run(second.id, actor="bob")
    approve2 = otel.named("squidmesh.approve_run")[-1]
    assert approve2.context.trace_id == request.get_span_context().trace_id
    assert [link.context.span_id for link in approve2.links] == [
        starts[str(second.id)].context.span_id
    ]
    # The activation the approval ran is in the run's trace either way.
    mesh.drain()
    for run in (first, second):
        activations = [
            s
            for s in otel.named("squidmesh.activate")
            if _attributes(s)["squidmesh.run_id"] == str(run.id)
        ]
        assert {s.context.trace_id for s in activations} == {starts[str(run.id)].context.trace_id}

    # A refused call: ERROR with the exception, and nothing else changes.
    with pytest.raises(sm.InvalidTransitionError):
        mesh.approve_run(first.id, actor="alice")
    refused = otel.named("squidmesh.approve_run")[-1]
    assert refused.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in refused.events)


def test_a_suspended_activation_is_an_error_span(otel: Otel, factory: MeshFactory) -> None:
    mesh = factory([broken], executor="database")
    run = mesh.start_run(broken)
    mesh.drain()
    assert mesh.inspect_run(run.id).status == "suspended"
    last = otel.named("squidmesh.activate")[-1]
    assert _attributes(last)["squidmesh.outcome"] == "suspended"
    assert last.status.status_code is StatusCode.ERROR
    (exception,) = [e for e in last.events if e.name == "exception"]
    assert exception.attributes is not None
    assert "a bug in the workflow" in str(exception.attributes["exception.message"])


def _sum(points: list[Any], **attributes: Any) -> Any:
    wanted = {f"squidmesh.{k}": v for k, v in attributes.items()}
    return sum(
        p.value if hasattr(p, "value") else p.count
        for p in points
        if all(dict(p.attributes).get(k) == v for k, v in wanted.items())
    )


def test_metrics(otel: Otel, factory: MeshFactory) -> None:
    mesh = factory([pipeline], executor="database")
    runs = [mesh.start_run(pipeline) for _ in range(2)]
    # Both runs' first activations are due: the backlog no worker has claimed.
    (ready,) = otel.points("squidmesh.jobs.ready")
    assert ready.value == 2 and "squidmesh.database" in dict(ready.attributes)
    factory.clock.advance(3)  # they have waited 3 s by the time they are performed
    _run_all(mesh, factory)
    assert all(mesh.inspect_run(r.id).status == "completed" for r in runs)

    attempts = otel.points("squidmesh.step.attempts")
    assert _sum(attempts, workflow="pipeline", step="fetch", outcome="completed") == 2
    assert _sum(attempts, workflow="pipeline", step="shaky", outcome="retry") == 1
    assert _sum(attempts, workflow="pipeline", step="shaky", outcome="completed") == 2
    assert _sum(attempts) == 2 * 4 + 1
    durations = otel.points("squidmesh.step.duration")
    assert _sum(durations) == 2 * 4 + 1  # one measurement per attempt that ended
    transitions = otel.points("squidmesh.run.transitions")
    assert _sum(transitions, workflow="pipeline", status="pending") == 2
    assert _sum(transitions, workflow="pipeline", status="retrying") == 1
    assert _sum(transitions, workflow="pipeline", status="completed") == 2
    waited = otel.points("squidmesh.job.schedule_to_start")
    activate = [p for p in waited if dict(p.attributes)["squidmesh.job.kind"] == "activate"]
    # the first activations waited 3 s on the virtual clock; later ones none
    assert sum(p.count for p in activate) >= 2 and max(p.max for p in activate) == 3.0
    assert {dict(p.attributes)["squidmesh.job.kind"] for p in waited} == {"activate", "step"}
    (ready,) = otel.points("squidmesh.jobs.ready")
    assert ready.value == 0


@sm.workflow
def chain():
    a = yield fetch(1)
    b = yield fetch(a)
    return (yield fetch(b))


def test_schedule_to_start_measures_delivered_jobs_not_steps_a_worker_began_itself(
    otel: Otel, factory: MeshFactory
) -> None:
    mesh = factory([chain], executor="database")
    run = mesh.start_run(chain)
    factory.clock.advance(3)  # the activation waits 3 s for a worker
    mesh.worker(concurrency=1)
    wait_for(lambda: mesh.inspect_run(run.id).status == "completed", 30, "the run")

    waited = otel.points("squidmesh.job.schedule_to_start")
    # The worker claimed the activation after 3 s. Each step it then began in the change
    # that recorded the one before (eager continuation) and ran at once: its job row
    # carries the activation's due time on, which is no wait of the step's own.
    by_kind = {dict(p.attributes)["squidmesh.job.kind"]: p for p in waited}
    assert set(by_kind) == {"activate"}, by_kind
    assert (by_kind["activate"].count, by_kind["activate"].max) == (1, 3.0)


def test_telemetry_false_records_nothing(otel: Otel, factory: MeshFactory) -> None:
    mesh = factory([pipeline], executor="database", telemetry=False)
    with otel.tracer.start_as_current_span("request"):
        run = mesh.start_run(pipeline)
    _run_all(mesh, factory)
    assert mesh.inspect_run(run.id).status == "completed"
    # the host's own spans (in the steps) are recorded; squidmesh makes none
    assert [s.name for s in otel.spans()] == ["request", "GET /fetch", "GET /thread", "GET /async"]
    assert all(s.parent is None for s in otel.spans() if s.name.startswith("GET"))
    assert otel.points("squidmesh.step.attempts") == []
    assert otel.points("squidmesh.jobs.ready") == []


def test_without_an_sdk_nothing_is_recorded_or_stored(factory: MeshFactory) -> None:
    # The API is installed but no SDK is configured (the otel fixture is not used).
    mesh = factory([pipeline], executor="database")
    run = mesh.start_run(pipeline)
    _run_all(mesh, factory)
    assert mesh.inspect_run(run.id).status == "completed"
    with factory.probe.transaction() as tx:
        found = tx.get_run(str(run.id))
    assert found is not None and found.trace_context is None


def test_without_the_otel_extra_squidmesh_works(tmp_path: Any) -> None:
    # opentelemetry made unimportable: squidmesh must not need it.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # import opentelemetry -> ImportError
        import squidmesh as sm

        @sm.step
        def hello() -> str:
            return "hi"

        @sm.workflow
        def greet():
            return (yield hello())

        mesh = sm.Mesh("sqlite:///{tmp_path / "plain.db"}", workflows=[greet],
                       executor=sm.InlineExecutor())
        seen = []
        mesh.subscribe(lambda event: seen.append(event.type))
        run = mesh.start_run(greet)
        print(mesh.inspect_run(run.id).status, len(seen), "opentelemetry" in sys.modules
              and sys.modules["opentelemetry"] is not None)
        mesh.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["completed", "5", "False"]


FLOW = sm.Queue("test-otel-flow", concurrency=1)


@sm.step(queue=FLOW)
def queued_fetch(n: int) -> int:
    return n


@sm.workflow
def queued_pair() -> Any:
    return (yield sm.join(queued_fetch(1), queued_fetch(2)))


def test_queue_gauge_counts_running_and_waiting_jobs(otel: Otel, factory: MeshFactory) -> None:
    mesh = factory([queued_pair], executor="database")
    run = mesh.start_run(queued_pair)
    mesh.drain(limit=1)  # the activation: both calls wait for the queue's one slot
    points = [
        p
        for p in otel.points("squidmesh.queue.jobs")
        if dict(p.attributes)["squidmesh.queue"] == FLOW.name
    ]
    states = {dict(p.attributes)["squidmesh.queue.state"]: p.value for p in points}
    assert states == {"running": 0, "waiting": 2}
    mesh.drain()
    assert mesh.inspect_run(run.id).result == [1, 2]


@sm.step
def double(n: int) -> int:
    return n * 2


@sm.workflow
def plain():
    a = yield double(1)
    yield shaky()
    return (yield double(a))


class _MisconfiguredMeters(MeterProvider):
    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no exporter endpoint")


class _MisconfiguredTracers(TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no exporter endpoint")


@pytest.mark.parametrize("records", ["metrics", "spans"])
def test_an_opentelemetry_provider_that_fails_changes_no_run(
    factory: MeshFactory, caplog: pytest.LogCaptureFixture, records: str
) -> None:
    # The host's telemetry is the host's to fix: a provider that raises costs its
    # metrics or spans and one log line, never a step, a run or a worker's job.
    reset_globals()
    provider: MeterProvider | TracerProvider
    if records == "metrics":
        provider = _MisconfiguredMeters()
        metrics.set_meter_provider(provider)
    else:
        provider = _MisconfiguredTracers()
        trace.set_tracer_provider(provider)
    try:
        mesh = factory([plain], executor="database")
        with caplog.at_level(logging.WARNING, logger="squidmesh"):
            run = mesh.start_run(plain)
            _run_all(mesh, factory)
        assert mesh.inspect_run(run.id).status == "completed"
        assert mesh.inspect_run(run.id).result == 4
        failed = [r for r in caplog.records if "no exporter endpoint" in r.getMessage()]
        assert len(failed) == 1, [r.getMessage() for r in caplog.records]
        assert f"records no {records}" in failed[0].getMessage()
    finally:
        provider.shutdown()
        reset_globals()
