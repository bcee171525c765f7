"""Bad input always gets a clear error and changes nothing (SPEC sections 4 and 11).

ONE table: each row is (description, call, expected error, text the message must name).
Every row runs on SQLite and on PostgreSQL against a prepared "world" of runs in every
interesting state (completed, failed, cancelled, paused at an approval, approved once
and now paused, sleeping, completed after an irreversible step, a completed join, a run
whose workflow this Mesh no longer has). For an API call the error type is checked, the
message must name what was wrong, and a snapshot of the whole database (runs, history,
attempts, audit, buffered events, jobs) taken before the call must equal one taken after.

Two rows are bad input met while a run executes rather than at an API call (a step
returning a value that is not JSON; workflow code changed incompatibly): their call
starts a fresh run and works it, the error is the one RECORDED for that run, and
everything outside that run must be unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel

import squidmesh as sm
from squidmesh.core.contracts import EncodeError
from squidmesh.storage import open_store
from tests.runtime.support import VirtualClock, differences, snapshot
from tests.support import postgres

# --------------------------------------------------------------------------- workflows


class Order(BaseModel):
    order_id: str
    quantity: int = 1


class Mithril:
    """Not JSON: a step returning one fails its attempt for good."""


@sm.step
def pack(order_id: str) -> str:
    return f"packed {order_id}"


@sm.step
def repack(order_id: str) -> str:
    return f"repacked {order_id}"


@sm.step(irreversible=True)
def launch(target: str) -> str:
    return f"launched {target}"


@sm.step(retry=sm.Retry(max_attempts=3))
def forge() -> Any:
    return Mithril()


@sm.workflow(
    name="orders",
    triggers=[sm.manual("place", payload=Order), sm.cron("0 3 * * *", name="nightly")],
)
def orders(order: Order) -> Any:
    packed = yield pack(order.order_id)
    return packed


@sm.workflow(name="gated")
def gated(payload: Any) -> Any:
    yield pack("g")
    decision = yield sm.approval("sign_off")
    yield sm.pause("after_sign_off")
    return decision.approved


@sm.workflow(name="napping")
def napping(payload: Any) -> Any:
    yield sm.sleep(seconds=10**6)
    return "rested"


@sm.workflow(name="rocket")
def rocket(payload: Any) -> Any:
    return (yield launch("moon"))


@sm.workflow(name="parallel")
def parallel(payload: Any) -> Any:
    left, right = yield sm.join(pack("l"), pack("r"))
    return [left, right]


@sm.workflow(name="doomed")
def doomed(payload: Any) -> Any:
    yield pack("d")
    raise sm.Fail("doomed from the start")


@sm.workflow(name="forging")
def forging(payload: Any) -> Any:
    return (yield forge())


@sm.step(retry=sm.Retry(max_attempts=3))
def hoard() -> str:
    return "gold" * 600_000  # 2.4 MB of JSON: over the default 1 MiB


@sm.workflow(name="hoarding")
def hoarding(payload: Any) -> Any:
    return (yield hoard())


@sm.workflow(name="orphan")
def orphan(payload: Any) -> Any:
    decision = yield sm.approval("orphan_gate")
    return decision.approved


@sm.workflow(name="drift")
def drift_v1(payload: Any) -> Any:
    packed = yield pack("x")
    yield sm.sleep(seconds=5)
    return packed


@sm.workflow(name="drift")
def drift_v2(payload: Any) -> Any:  # deployed later: the first step changed
    packed = yield repack("x")
    yield sm.sleep(seconds=5)
    return packed


COMMON = [orders, gated, napping, rocket, parallel, doomed, forging, hoarding]


# --------------------------------------------------------------------------- the world


@dataclasses.dataclass
class World:
    kind: str
    url: str
    clock: VirtualClock
    mesh: sm.Mesh  # every workflow, drift at v1
    bare: sm.Mesh  # the same code without ``orphan`` (its code was removed)
    v2: sm.Mesh  # drift changed incompatibly
    probe: Any
    runs: dict[str, str] = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> str:  # w.completed, w.paused, ... -> run ids
        runs: dict[str, str] = self.__dict__.get("runs", {})
        if name in runs:
            return str(runs[name])
        raise AttributeError(name)

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.probe)


def _build(kind: str, url: str) -> World:
    clock = VirtualClock()

    def mesh(workflows: list[sm.WorkflowDefinition]) -> sm.Mesh:
        return sm.Mesh(url, workflows=workflows, executor=sm.DatabaseExecutor(), clock=clock)

    main = mesh([*COMMON, orphan, drift_v1])
    main.migrate()
    world = World(
        kind, url, clock, main, mesh(list(COMMON)), mesh([*COMMON, drift_v2]), open_store(url)
    )
    start = main.start_run
    runs = world.runs
    runs["completed"] = str(start("orders", {"order_id": "o-1"}).id)
    runs["paused"] = str(start("gated").id)
    runs["approved"] = str(start("gated").id)
    runs["sleeping"] = str(start("napping").id)
    runs["cancelled"] = str(start("napping").id)
    runs["rocket"] = str(start("rocket").id)
    runs["parallel"] = str(start("parallel").id)
    runs["failed"] = str(start("doomed").id)
    runs["orphan"] = str(start("orphan").id)
    main.drain()
    main.approve_run(runs["approved"], actor="elrond")
    main.cancel_run(runs["cancelled"], actor="sauron")
    main.drain()
    expected = {
        "completed": "completed",
        "paused": "paused",
        "approved": "paused",
        "sleeping": "running",
        "cancelled": "cancelled",
        "rocket": "completed",
        "parallel": "completed",
        "failed": "failed",
        "orphan": "paused",
    }
    assert {k: main.inspect_run(v).status.value for k, v in runs.items()} == expected
    return world


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    created = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('bad_input') / 'world.db'}"
    else:
        server = request.getfixturevalue("pg_server_url")
        created = postgres.create_database(server, "rel_bad_input")
        url = postgres.sqlalchemy_url(created)
    built = _build(request.param, url)
    try:
        yield built
    finally:
        for mesh in (built.mesh, built.bare, built.v2):
            mesh.close()
        built.probe.close()
        if created is not None:
            postgres.drop_database(created)


# --------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class Row:
    description: str
    call: Callable[[World], Any]
    error: type[BaseException]
    names: str
    #: the bad input is met by a run at work: the call returns that run's id and the
    #: error is the one recorded for it
    recorded: bool = False


UNKNOWN = "0b5e5a5e-0000-4000-8000-00000000beef"
FIRE = datetime(2030, 1, 1, 3, 0)  # naive


def _removed(w: World) -> Any:
    why = w.bare.explain_run(w.orphan)
    assert (why.reason, why.status) == ("workflow_unavailable", "paused"), why
    return w.bare.approve_run(w.orphan, actor="gandalf")


def _non_json_output(w: World) -> str:
    run = w.mesh.start_run("forging")
    w.mesh.drain()
    done = w.mesh.inspect_run(run.id, include_history=True)
    assert done.status == "failed", done
    (step,) = done.step_runs or ()
    assert [(a.number, a.status) for a in step.attempts] == [(1, "failed")]  # not retried
    assert step.attempts[0].error is not None and step.attempts[0].error["retryable"] is False
    assert "Mithril" in step.attempts[0].error["message"]
    return str(run.id)


def _oversized_output(w: World) -> str:
    run = w.mesh.start_run("hoarding")
    w.mesh.drain()
    done = w.mesh.inspect_run(run.id, include_history=True)
    assert done.status == "failed", done
    (step,) = done.step_runs or ()
    assert [(a.number, a.status) for a in step.attempts] == [(1, "failed")]  # not retried
    assert step.output is None  # nothing of the oversized value was stored
    return str(run.id)


def _changed_code(w: World) -> str:
    run = w.mesh.start_run("drift")
    w.mesh.drain()  # v1 packed and sleeps
    w.clock.advance(10)
    w.v2.drain()  # the timer fires on the new code
    why = w.v2.explain_run(run.id)
    assert (why.status, why.reason) == ("suspended", "nondeterminism"), why
    return str(run.id)


ROWS = [
    # payloads (PayloadError: nothing is persisted)
    Row(
        "payload missing a field",
        lambda w: w.mesh.start_run("orders", {}),
        sm.PayloadError,
        "order_id",
    ),
    Row(
        "payload with an unknown field",
        lambda w: w.mesh.start_run("orders", {"order_id": "o", "colour": "red"}),
        sm.PayloadError,
        "colour",
    ),
    Row(
        "payload field of the wrong type",
        lambda w: w.mesh.start_run("orders", {"order_id": "o", "quantity": "many"}),
        sm.PayloadError,
        "quantity",
    ),
    Row(
        "payload that is not a mapping",
        lambda w: w.mesh.start_run("orders", ["o"]),  # type: ignore[arg-type]
        sm.PayloadError,
        "expected a mapping",
    ),
    Row(
        "payload for a trigger that takes none",
        lambda w: w.mesh.start_run("napping", {"hours": 3}),
        sm.PayloadError,
        "hours",
    ),
    Row(
        "empty idempotency key",
        lambda w: w.mesh.start_run("orders", {"order_id": "o"}, idempotency_key=""),
        ValueError,
        "idempotency_key",
    ),
    # unknown workflow / trigger
    Row(
        "unknown workflow",
        lambda w: w.mesh.start_run("mordor_tour"),
        sm.UnknownWorkflowError,
        "mordor_tour",
    ),
    Row(
        "unknown trigger",
        lambda w: w.mesh.start_run("orders", {"order_id": "o"}, trigger="hourly"),
        sm.UnknownTriggerError,
        "hourly",
    ),
    Row(
        "fire_cron on a manual trigger",
        lambda w: w.mesh.fire_cron("orders", "place", FIRE.replace(tzinfo=w.clock().tzinfo)),
        sm.UnknownTriggerError,
        "place",
    ),
    Row(
        "fire_cron with a naive fire time",
        lambda w: w.mesh.fire_cron("orders", "nightly", FIRE),
        ValueError,
        "timezone",
    ),
    # unknown runs, malformed ids
    Row("unknown run", lambda w: w.mesh.inspect_run(UNKNOWN), sm.RunNotFoundError, UNKNOWN),
    Row(
        "unknown run to approve",
        lambda w: w.mesh.approve_run(UNKNOWN, actor="a"),
        sm.RunNotFoundError,
        UNKNOWN,
    ),
    Row(
        "unknown run to replay", lambda w: w.mesh.replay_run(UNKNOWN), sm.RunNotFoundError, UNKNOWN
    ),
    Row("non-UUID string id", lambda w: w.mesh.inspect_run("frodo"), sm.RunNotFoundError, "frodo"),
    Row(
        "non-UUID id to cancel",
        lambda w: w.mesh.cancel_run("not-a-run"),
        sm.RunNotFoundError,
        "not-a-run",
    ),
    Row("None as run id", lambda w: w.mesh.explain_run(None), sm.RunNotFoundError, "None"),
    Row("int as run id", lambda w: w.mesh.approve_run(42, actor="a"), sm.RunNotFoundError, "42"),
    Row("int id to export", lambda w: w.mesh.export_history(7), sm.RunNotFoundError, "7"),
    Row(
        "truncated UUID to fork",
        lambda w: w.mesh.fork_run(UNKNOWN[:-4], at_seq=0),
        sm.RunNotFoundError,
        UNKNOWN[:-4],
    ),
    # approvals
    Row(
        "approve a completed run",
        lambda w: w.mesh.approve_run(w.completed, actor="a"),
        sm.InvalidTransitionError,
        "completed",
    ),
    Row(
        "approve a sleeping run",
        lambda w: w.mesh.approve_run(w.sleeping, actor="a"),
        sm.InvalidTransitionError,
        "not at an approval",
    ),
    Row(
        "double approval",
        lambda w: w.mesh.approve_run(w.approved, actor="elrond"),
        sm.InvalidTransitionError,
        "after_sign_off",
    ),
    Row(
        "reject with an empty actor",
        lambda w: w.mesh.reject_run(w.paused, actor=""),
        sm.ReviewError,
        "actor",
    ),
    Row(
        "reject without an actor",
        lambda w: w.mesh.reject_run(w.paused, actor=None),  # type: ignore[arg-type]
        sm.ReviewError,
        "actor",
    ),
    Row(
        "approve with a blank actor",
        lambda w: w.mesh.approve_run(w.paused, actor="  "),
        sm.ReviewError,
        "actor",
    ),
    Row(
        "approve with metadata that is not a dict",
        lambda w: w.mesh.approve_run(w.paused, actor="a", metadata=["x"]),  # type: ignore[arg-type]
        sm.ReviewError,
        "metadata",
    ),
    Row(
        "unblock a run waiting at an approval",
        lambda w: w.mesh.unblock_run(w.paused),
        sm.InvalidTransitionError,
        "not at a pause",
    ),
    # operator actions in the wrong state
    Row(
        "fork past the history", lambda w: w.mesh.fork_run(w.completed, at_seq=99), ValueError, "99"
    ),
    Row(
        "fork at a negative seq",
        lambda w: w.mesh.fork_run(w.completed, at_seq=-1),
        ValueError,
        "-1",
    ),
    Row(
        "fork at a non-int seq",
        lambda w: w.mesh.fork_run(w.completed, at_seq="1"),  # type: ignore[arg-type]
        ValueError,
        "at_seq",
    ),
    Row(
        "fork inside a join",
        lambda w: w.mesh.fork_run(w.parallel, at_seq=2),
        ValueError,
        "inside the join",
    ),
    Row(
        "fork past an unresolved entry",
        lambda w: w.mesh.fork_run(w.sleeping, at_seq=1),
        ValueError,
        "no recorded result",
    ),
    Row(
        "replay after an irreversible step",
        lambda w: w.mesh.replay_run(w.rocket),
        sm.UnsafeReplayError,
        "launch",
    ),
    Row(
        "replay with a truthy non-True override",
        lambda w: w.mesh.replay_run(w.rocket, allow_irreversible="yes"),  # type: ignore[arg-type]
        sm.UnsafeReplayError,
        "allow_irreversible=True",
    ),
    Row(
        "resume a completed run",
        lambda w: w.mesh.resume_run(w.completed),
        sm.InvalidTransitionError,
        "not suspended",
    ),
    Row(
        "resume a paused run",
        lambda w: w.mesh.resume_run(w.paused),
        sm.InvalidTransitionError,
        "not suspended",
    ),
    Row(
        "cancel a completed run",
        lambda w: w.mesh.cancel_run(w.completed),
        sm.InvalidTransitionError,
        "completed",
    ),
    Row(
        "cancel a failed run",
        lambda w: w.mesh.cancel_run(w.failed),
        sm.InvalidTransitionError,
        "failed",
    ),
    Row(
        "cancel a cancelled run",
        lambda w: w.mesh.cancel_run(w.cancelled),
        sm.InvalidTransitionError,
        "cancelled",
    ),
    Row(
        "send_event to a completed run",
        lambda w: w.mesh.send_event(w.completed, "ping"),
        sm.InvalidTransitionError,
        "completed",
    ),
    Row(
        "send_event to a cancelled run",
        lambda w: w.mesh.send_event(w.cancelled, "ping", {"x": 1}),
        sm.InvalidTransitionError,
        "cancelled",
    ),
    Row(
        "send_event without a name",
        lambda w: w.mesh.send_event(w.sleeping, ""),
        ValueError,
        "event name",
    ),
    Row("list_runs limit 0", lambda w: w.mesh.list_runs(limit=0), ValueError, "limit"),
    Row("list_runs negative limit", lambda w: w.mesh.list_runs(limit=-5), ValueError, "-5"),
    Row(
        "list_runs limit as a string",
        lambda w: w.mesh.list_runs(limit="10"),  # type: ignore[arg-type]
        ValueError,
        "'10'",
    ),
    Row(
        "list_runs unknown status",
        lambda w: w.mesh.list_runs(status="sleepy"),
        ValueError,
        "sleepy",
    ),
    # workflow code removed
    Row("act on a run whose workflow was removed", _removed, sm.UnknownWorkflowError, "orphan"),
    Row(
        "replay a run whose workflow was removed",
        lambda w: w.bare.replay_run(w.orphan),
        sm.UnknownWorkflowError,
        "orphan",
    ),
    Row(
        "fork a run whose workflow was removed",
        lambda w: w.bare.fork_run(w.orphan, at_seq=0),
        sm.UnknownWorkflowError,
        "orphan",
    ),
    Row(
        "start a removed workflow",
        lambda w: w.bare.start_run("orphan"),
        sm.UnknownWorkflowError,
        "orphan",
    ),
    # bad input met by a run at work: recorded on that run, nothing else changes
    Row("step output that is not JSON", _non_json_output, EncodeError, "Mithril", recorded=True),
    Row(
        "workflow code changed incompatibly",
        _changed_code,
        sm.NondeterminismError,
        "repack",
        recorded=True,
    ),
    Row(
        "oversized payload (2 MB)",
        lambda w: w.mesh.start_run("orders", {"order_id": "x" * 2_000_000}),
        sm.PayloadError,
        "bytes of JSON",
    ),
    Row(
        "oversized event data (2 MB)",
        lambda w: w.mesh.send_event(w.sleeping, "ping", {"blob": "x" * 2_000_000}),
        sm.ValueTooLargeError,
        "'ping'",
    ),
    Row(
        "oversized step output (2.4 MB)",
        _oversized_output,
        sm.ValueTooLargeError,
        "hoard",
        recorded=True,
    ),
]


def _id(row: Any) -> str:
    return row.description if isinstance(row, Row) else str(row)


def _type_name(error: type[BaseException]) -> str:
    return f"{error.__module__}.{error.__qualname__}"


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_bad_input_gets_a_clear_error_and_changes_nothing(world: World, row: Row) -> None:
    before = world.snapshot()
    if row.recorded:
        run_id = row.call(world)
        run = world.mesh.inspect_run(run_id)
        assert run.error is not None, run
        assert run.error["type"] == _type_name(row.error), run.error
        message = str(run.error["message"])
        after = world.snapshot()
        assert run_id in after["runs"] and run_id not in before["runs"]
        del after["runs"][run_id]
    else:
        with pytest.raises(row.error) as info:
            row.call(world)
        message = str(info.value)
        after = world.snapshot()
    assert row.names in message, f"the message does not name {row.names!r}: {message}"
    diff = differences(before, after)
    assert not diff, f"{row.description} changed the database:\n" + "\n".join(diff[:20])
