from __future__ import annotations

# mesh.subscribe and the lifecycle log lines (SPEC section 14), on the three stores:
# which events a run produces and in what order, that they are delivered only after the
# transaction that recorded them committed (read back through another connection), that
# a rolled-back change delivers nothing, and that a failing callback changes nothing.
import dataclasses
import logging
import threading
from typing import Any

import pytest
import sqlalchemy as sa

import squidmesh as sm
from squidmesh.runtime.events import EventBus
from squidmesh.runtime.telemetry import Telemetry
from tests.runtime.support import MeshFactory
from tests.support.waiting import wait_for

CALLS: dict[str, int] = {}


@sm.step(retry=sm.Retry(max_attempts=2, backoff=sm.Backoff.fixed(5)))
def wobbly() -> str:
    CALLS["wobbly"] = CALLS.get("wobbly", 0) + 1
    if CALLS["wobbly"] == 1:
        raise ConnectionError("line down")
    return "steady"


def unbook(input: dict[str, Any], output: Any, failure: dict[str, Any] | None) -> str:
    return f"unbooked {output}"


@sm.step(compensate=unbook)
def book() -> str:
    return "seat 4A"


@sm.step
def explode() -> str:
    raise ValueError("boom")


@sm.workflow
def trip():
    yield wobbly()
    yield book()
    yield sm.log("about to explode", level="warning", gate="B12")
    yield explode()


@sm.step
def hello() -> str:
    return "hi"


@sm.workflow
def greeting():
    return (yield hello())


@sm.workflow
def waits():
    decision = yield sm.approval("go")
    return decision.approved


@pytest.fixture(autouse=True)
def _calls() -> None:
    CALLS.clear()


def _collect(mesh: sm.Mesh) -> list[sm.LifecycleEvent]:
    seen: list[sm.LifecycleEvent] = []
    mesh.subscribe(seen.append)
    return seen


def _brief(event: sm.LifecycleEvent) -> tuple[Any, ...]:
    return (event.type, event.step, event.seq, event.attempt, event.outcome, event.status)


def test_a_run_tells_its_whole_lifecycle_in_order(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([trip], executor="database")
    seen = _collect(mesh)
    run = mesh.start_run(trip)
    mesh.drain()
    mesh_factory.clock.advance(5)  # the retry of wobbly falls due
    mesh.drain()
    assert mesh.inspect_run(run.id).status == "failed"

    assert [_brief(e) for e in seen] == [
        ("run.created", None, None, None, None, "pending"),
        ("run.transition", None, None, None, None, "running"),
        ("step.started", "wobbly", 0, 1, None, "running"),
        ("step.retry_scheduled", "wobbly", 0, 1, "retry", "retrying"),
        ("run.transition", None, None, None, None, "retrying"),
        ("step.started", "wobbly", 0, 2, None, "running"),
        ("run.transition", None, None, None, None, "running"),
        ("step.completed", "wobbly", 0, 2, "completed", "running"),
        ("step.started", "book", 1, 1, None, "running"),
        ("step.completed", "book", 1, 1, "completed", "running"),
        ("step.started", "explode", 3, 1, None, "running"),
        ("step.failed", "explode", 3, 1, "failed", "running"),
        ("run.compensation", None, None, None, "started", "running"),
        # the last compensation and the end of the run commit together: status as committed
        ("run.compensation", "book", 1, None, "completed", "failed"),
        ("run.transition", None, None, None, None, "failed"),
    ]
    transitions = [(e.from_status, e.status) for e in seen if e.type == "run.transition"]
    assert transitions == [
        ("pending", "running"),
        ("running", "retrying"),
        ("retrying", "running"),
        ("running", "failed"),
    ]
    assert {e.run_id for e in seen} == {run.id}
    assert {(e.workflow, e.trigger) for e in seen} == {("trip", "manual")}

    retry = next(e for e in seen if e.type == "step.retry_scheduled")
    assert retry.delay == 5
    assert retry.error is not None and retry.error["type"] == "builtins.ConnectionError"
    assert retry.error["message"] == "line down"
    failed = next(e for e in seen if e.type == "step.failed")
    assert failed.error is not None and failed.error["message"] == "boom"
    # durations come from the attempts' recorded times (the virtual clock stands still
    # while a step runs, so they are 0 here, but they are measured, never absent)
    ends = [e for e in seen if e.outcome in ("completed", "retry", "failed") and e.step]
    assert all(e.duration == 0.0 for e in ends)
    # the events agree with what inspect_run records
    step_runs = mesh.inspect_run(run.id, include_history=True).step_runs
    wobbly_run = next(s for s in step_runs or () if s.name == "wobbly")
    assert [a.status for a in wobbly_run.attempts] == ["failed", "completed"]
    assert retry.at.isoformat() == wobbly_run.attempts[0].finished_at


def test_events_are_delivered_after_commit(pg_mesh_factory: MeshFactory) -> None:
    # Each callback reads the database through another connection: what the event tells
    # must already be committed (on PostgreSQL an uncommitted row is invisible there).
    mesh = pg_mesh_factory([greeting], executor="database")
    engine = pg_mesh_factory.sqlalchemy_engine()
    checked: list[str] = []

    def verify(event: sm.LifecycleEvent) -> None:
        with engine.connect() as conn:
            status = conn.execute(
                sa.text("SELECT status FROM squidmesh.squidmesh_runs WHERE id = :id"),
                {"id": str(event.run_id)},
            ).scalar()
            assert status == event.status, event
            if event.attempt is not None:
                # A first attempt that succeeds is recorded by its entry alone.
                entry = conn.execute(
                    sa.text(
                        "SELECT status, attempts FROM squidmesh.squidmesh_entries "
                        "WHERE run_id = :id AND seq = :seq"
                    ),
                    {"id": str(event.run_id), "seq": event.seq},
                ).one()
                expected = "running" if event.type == "step.started" else "completed"
                assert tuple(entry) == (expected, event.attempt), event
        checked.append(event.type)

    mesh.subscribe(verify)
    mesh.start_run(greeting)
    mesh.drain()
    engine.dispose()
    assert checked == [
        "run.created",
        "run.transition",
        "step.started",
        "step.completed",
        "run.transition",
    ]


class RefusingExecutor:
    def enqueue(self, jobs: Any, *, connection: Any) -> None:
        raise RuntimeError("broker down")


def test_a_rolled_back_change_delivers_nothing(mesh_factory: MeshFactory) -> None:
    refusing = mesh_factory([greeting, waits], executor=RefusingExecutor())
    seen = _collect(refusing)
    with pytest.raises(sm.DispatchError):
        refusing.start_run(greeting)
    assert seen == []

    mesh = mesh_factory([greeting, waits], executor="database")
    seen = _collect(mesh)
    run = mesh.start_run(greeting)
    seen.clear()
    with pytest.raises(sm.InvalidTransitionError):
        mesh.approve_run(run.id, actor="alice")  # the run is not at an approval
    assert seen == []


def _outcome(mesh: sm.Mesh, run_id: Any) -> Any:
    found = mesh.inspect_run(run_id, include_history=True)
    return (
        found.status,
        found.reason,
        found.result,
        [(s.name, s.status, [a.status for a in s.attempts]) for s in found.step_runs or ()],
        [(a.type, a.step) for a in found.audit_events or ()],
    )


def _fly(mesh: sm.Mesh, factory: MeshFactory) -> Any:
    CALLS.clear()
    run = mesh.start_run(trip)
    mesh.drain()
    factory.clock.advance(5)
    mesh.drain()
    return run


def test_a_failing_subscriber_is_logged_and_changes_nothing(
    mesh_factory: MeshFactory, caplog: pytest.LogCaptureFixture
) -> None:
    plain = mesh_factory([trip], executor="database")
    expected = _outcome(plain, _fly(plain, mesh_factory).id)

    mesh = mesh_factory([trip], executor="database")

    def broken(event: sm.LifecycleEvent) -> None:
        raise RuntimeError(f"cannot handle {event.type}")

    mesh.subscribe(broken)
    after = _collect(mesh)  # subscribed after the broken one: still served
    with caplog.at_level(logging.ERROR, logger="squidmesh"):
        run = _fly(mesh, mesh_factory)
    assert _outcome(mesh, run.id) == expected
    assert expected[0] == "failed" and len(after) == 15
    failures = [r for r in caplog.records if "lifecycle subscriber" in r.getMessage()]
    assert len(failures) == 15
    assert failures[0].name == "squidmesh"
    assert "run.created" in failures[0].getMessage() and str(run.id) in failures[0].getMessage()
    assert failures[0].exc_info is not None and "cannot handle" in str(failures[0].exc_info[1])


def test_unsubscribe_and_frozen_events(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([greeting])
    seen: list[sm.LifecycleEvent] = []
    unsubscribe = mesh.subscribe(seen.append)
    mesh.start_run(greeting)
    assert [e.type for e in seen][-1] == "run.transition" and seen[-1].status == "completed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].status = "failed"  # type: ignore[misc]
    count = len(seen)
    unsubscribe()
    unsubscribe()  # harmless twice
    mesh.start_run(greeting)
    assert len(seen) == count
    with pytest.raises(sm.InvalidArgumentError, match="callable"):
        mesh.subscribe("not a function")  # type: ignore[arg-type]


def test_subscribers_are_called_in_the_committing_thread(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([greeting], executor="database")
    threads: set[str] = set()
    mesh.subscribe(lambda event: threads.add(threading.current_thread().name))
    worker = mesh.worker(concurrency=1, poll_interval=0.05, scheduler=False, sweep_interval=0)
    try:
        run = mesh.start_run(greeting)
        wait_for(lambda: mesh.inspect_run(run.id).status == "completed", 30, "the run to end")
    finally:
        worker.stop()
    assert threading.current_thread().name in threads  # run.created, in start_run's thread
    assert any(name.startswith("squidmesh-job") for name in threads)


# --------------------------------------------------------------------------- log lines


def _lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def test_lifecycle_log_lines_carry_their_fields(
    mesh_factory: MeshFactory, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = mesh_factory([trip], executor="database")
    with caplog.at_level(logging.INFO, logger="squidmesh"):
        run = mesh.start_run(trip)
        mesh.drain()
        mesh_factory.clock.advance(5)
        mesh.drain()
    steps = _lines(caplog, "squidmesh.step")
    rid = str(run.id)
    assert [r.getMessage() for r in steps[:3]] == [
        f"step trip.wobbly[{rid}] seq 0 attempt 1 started",
        f"step trip.wobbly[{rid}] seq 0 attempt 1 failed in 0.000s (ConnectionError: line "
        "down); attempt 2 in 5s",
        f"step trip.wobbly[{rid}] seq 0 attempt 2 started",
    ]
    assert [r.levelname for r in steps] == [
        "INFO",
        "WARNING",
        "INFO",
        "INFO",
        "INFO",
        "INFO",
        "INFO",
        "ERROR",
    ]
    fields = steps[1].squidmesh  # type: ignore[attr-defined]
    assert fields["run_id"] == rid and fields["workflow"] == "trip" and fields["step"] == "wobbly"
    assert (fields["seq"], fields["attempt"], fields["outcome"]) == (0, 1, "retry")
    assert fields["duration"] == 0.0 and fields["delay"] == 5
    assert fields["error"]["message"] == "line down" and "traceback" not in fields["error"]
    runs = [r.getMessage() for r in _lines(caplog, "squidmesh.run")]
    assert runs[0] == f"run trip[{rid}] created (trigger manual)"
    assert f"run trip[{rid}] running -> retrying" in runs
    assert f"run trip[{rid}] compensation of book (seq 1) completed" in runs
    assert runs[-1] == f"run trip[{rid}] running -> failed"
    # sm.log lines go to squidmesh.workflow with the workflow's own fields
    (said,) = _lines(caplog, "squidmesh.workflow")
    assert said.getMessage() == "about to explode" and said.levelname == "WARNING"
    assert said.squidmesh["gate"] == "B12" and said.squidmesh["run_id"] == rid  # type: ignore[attr-defined]
    # every record of a squidmesh logger carries a squidmesh dict
    ours = [r for r in caplog.records if r.name.startswith("squidmesh")]
    assert ours and all(isinstance(r.squidmesh, dict) for r in ours)  # type: ignore[attr-defined]


def test_telemetry_false_silences_the_lines_but_not_subscribers(
    mesh_factory: MeshFactory, caplog: pytest.LogCaptureFixture
) -> None:
    mesh = mesh_factory([greeting], telemetry=False)
    seen = _collect(mesh)
    with caplog.at_level(logging.DEBUG, logger="squidmesh"):
        mesh.start_run(greeting)
    assert [e.type for e in seen] == [
        "run.created",
        "run.transition",
        "step.started",
        "step.completed",
        "run.transition",
    ]
    assert not _lines(caplog, "squidmesh.step") and not _lines(caplog, "squidmesh.run")


def test_step_progress_is_built_only_where_something_uses_it(
    mesh_factory: MeshFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A step's start and successful end are the two events of every step. Only a
    # subscriber, the INFO lines of squidmesh.step or a meter provider use them; with
    # none of these they are not built, and a retry and a failure are still logged.
    bus = EventBus(Telemetry(database="test"))
    with caplog.at_level(logging.WARNING, logger="squidmesh"):
        assert not bus.recorder().progress
        mesh = mesh_factory([trip], executor="database")
        run = mesh.start_run(trip)
        mesh.drain()
        mesh_factory.clock.advance(5)
        mesh.drain()
        assert mesh.inspect_run(run.id).status == "failed"
    assert [(r.levelname, r.squidmesh["step"]) for r in _lines(caplog, "squidmesh.step")] == [  # type: ignore[attr-defined]
        ("WARNING", "wobbly"),
        ("ERROR", "explode"),
    ]
    with caplog.at_level(logging.INFO, logger="squidmesh.step"):
        assert bus.recorder().progress
    unsubscribe = bus.subscribe(lambda event: None)
    assert bus.recorder().progress
    unsubscribe()
    assert not bus.recorder().progress
    assert not EventBus().recorder().progress  # nothing listens at all
