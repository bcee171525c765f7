from __future__ import annotations

# The ``_async`` twins of every Mesh method (squidmesh/mesh.py, on the pool of
# squidmesh/async_api.py; SPEC section 17):
# - each twin takes exactly its sync method's parameters (pinned by signature);
# - each one works, end to end, on PostgreSQL: results and errors come back as the sync
#   method's would;
# - the event loop is never blocked: 100 concurrent twins stuck behind a row lock held
#   by the test leave the loop running, and the lock is released *by a coroutine*, so a
#   twin that blocked the loop would deadlock the test instead of passing it;
# - at most ``async_threads`` calls run at once, counted from pg_stat_activity.
import asyncio
import contextvars
import inspect
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

import squidmesh as sm
from squidmesh.async_api import DEFAULT_ASYNC_THREADS
from tests.support import postgres
from tests.test_exports import MESH_METHODS

TIMEOUT = 30.0


class Number(BaseModel):
    n: int = 1


@sm.step
def double(n: int) -> int:
    return 2 * n


@sm.workflow(
    triggers=[sm.manual(payload=Number), sm.cron("0 * * * *", name="hourly", payload=Number)]
)
def gated(payload: Number) -> Any:
    doubled = yield from double(payload.n)
    decision = yield from sm.approval("gate")
    if not decision.approved:
        return f"refused by {decision.actor}"
    held = yield from sm.pause("hold")
    pinged = yield from sm.wait_for_event("ping")
    return {"doubled": doubled, "held": held, "pinged": pinged}


BUGGY = {"broken": True}


@sm.workflow
def buggy() -> Any:
    if BUGGY["broken"]:
        raise RuntimeError("a bug in workflow code")
    yield sm.log("fixed")
    return "fixed"


# --------------------------------------------------------------------------- signatures


def test_every_public_method_has_a_twin_with_the_same_parameters() -> None:
    for name in MESH_METHODS:
        sync = getattr(sm.Mesh, name)
        twin = getattr(sm.Mesh, f"{name}_async")
        assert inspect.iscoroutinefunction(twin), name
        mine, theirs = inspect.signature(twin), inspect.signature(sync)
        assert list(mine.parameters.values()) == list(theirs.parameters.values()), name
        assert mine.return_annotation == theirs.return_annotation, name
        assert twin.__doc__ and f"[`{name}`][squidmesh.Mesh.{name}]" in twin.__doc__, name
    twins = {n for n in vars(sm.Mesh) if n.endswith("_async") and n[0] != "_"}
    assert twins == {f"{name}_async" for name in MESH_METHODS}


def test_async_threads_must_be_a_positive_integer() -> None:
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(sm.InvalidArgumentError, match="async_threads"):
            sm.Mesh("memory://", async_threads=bad)  # type: ignore[arg-type]


def test_a_mesh_used_only_synchronously_starts_no_thread() -> None:
    mesh = sm.Mesh("memory://", workflows=[gated])
    try:
        mesh.start_run(gated, {"n": 2})
        assert mesh._async.pool is None
        # The pool's threads are "squidmesh-async_<n>" (the async steps' loop thread,
        # "squidmesh-async-steps", belongs to whatever ran an async step before).
        assert not [t for t in threading.enumerate() if t.name.startswith("squidmesh-async_")]
    finally:
        mesh.close()
    assert DEFAULT_ASYNC_THREADS == 4


# --------------------------------------------------------------------------- every twin


@pytest.fixture
def pg_mesh(pg_database_url: str) -> Any:
    BUGGY["broken"] = True
    mesh = sm.Mesh(postgres.sqlalchemy_url(pg_database_url), workflows=[gated])
    yield mesh
    mesh.close()


async def _settle(mesh: sm.Mesh) -> None:
    """Run every due job (the twin of drain)."""
    while await mesh.drain_async():
        pass


def test_every_twin_works_end_to_end(pg_mesh: sm.Mesh) -> None:
    mesh = pg_mesh
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[tuple[str, str]] = []

    async def scenario() -> None:
        loop_thread = threading.current_thread().name
        assert await mesh.migrate_async() != []
        assert await mesh.migrate_async() == []  # idempotent, as migrate()
        await mesh.register_async(buggy)
        assert "buggy" in mesh.workflows

        # start (idempotent by key), work, read
        run = await mesh.start_run_async(gated, {"n": 21}, idempotency_key="order-1")
        assert run.status == "pending" and run.payload == {"n": 21}
        again = await mesh.start_run_async("gated", {"n": 21}, idempotency_key="order-1")
        assert again.id == run.id
        assert (await mesh.explain_run_async(run.id)).reason == "pending_dispatch"
        await mesh.perform_async({"kind": "activate", "run_id": str(run.id)})
        assert (await mesh.explain_run_async(run.id)).reason == "step_scheduled"
        await _settle(mesh)
        waiting = await mesh.explain_run_async(run.id)
        assert waiting.reason == "paused_for_approval" and "approve_run" in waiting.next_actions

        # the operator actions
        with pytest.raises(sm.ReviewError):
            await mesh.approve_run_async(run.id, actor=" ")
        with pytest.raises(sm.InvalidTransitionError):
            await mesh.unblock_run_async(run.id)
        await mesh.approve_run_async(run.id, actor="ana", comment="fine")
        await _settle(mesh)
        assert (await mesh.inspect_run_async(run.id)).status == "paused"
        await mesh.unblock_run_async(run.id, actor="bo", data={"shelf": 3})
        await _settle(mesh)
        await mesh.send_event_async(run.id, "ping", [1, 2], actor="cy")
        await _settle(mesh)
        done = await mesh.inspect_run_async(run.id, include_history=True)
        assert done.status == "completed"
        assert done.result == {"doubled": 42, "held": {"shelf": 3}, "pinged": [1, 2]}
        actors = {(e.type, e.actor) for e in done.audit_events or ()}
        assert {("approved", "ana"), ("unblocked", "bo"), ("event_received", "cy")} <= actors
        history = await mesh.export_history_async(run.id)
        assert [e["kind"] for e in history["entries"]] == [
            "step",
            "approval",
            "pause",
            "event",
        ]

        # new runs from old ones
        replayed = await mesh.replay_run_async(run.id, actor="ana")
        assert replayed.replayed_from_run_id == run.id
        forked = await mesh.fork_run_async(run.id, at_seq=1)
        assert forked.forked_from_run_id == run.id
        await _settle(mesh)
        await mesh.reject_run_async(replayed.id, actor="dee")
        await _settle(mesh)
        assert (await mesh.inspect_run_async(replayed.id)).result == "refused by dee"
        cancelled = await mesh.cancel_run_async(forked.id, actor="ana", reason="test")
        assert cancelled.status == "cancelled"

        # cron ticks, suspended runs
        tick = datetime(2030, 1, 1, 9, tzinfo=timezone.utc)
        fired = await mesh.fire_cron_async(gated, "hourly", tick)
        assert (await mesh.fire_cron_async("gated", "hourly", tick)).id == fired.id
        broken = await mesh.start_run_async(buggy)
        await _settle(mesh)
        assert (await mesh.inspect_run_async(broken.id)).status == "suspended"
        BUGGY["broken"] = False
        await mesh.resume_run_async(broken.id, actor="ops")
        await _settle(mesh)
        assert (await mesh.inspect_run_async(broken.id)).result == "fixed"

        # lists and counts
        listed = await mesh.list_runs_async(workflow=gated, limit=10)
        assert {r.id for r in listed} == {run.id, replayed.id, forked.id, fired.id}
        assert [r.id for r in await mesh.list_runs_async(status="cancelled")] == [forked.id]
        counts = await mesh.count_runs_async()
        assert counts["completed"] == 3 and counts["cancelled"] == 1

        # prune: the callback runs in the pool, with the caller's context variables
        def progress(total: int) -> None:
            seen.append((request_id.get(), threading.current_thread().name))

        request_id.set("req-7")
        cutoff = datetime.now(timezone.utc) + timedelta(days=1)
        assert await mesh.prune_async(cutoff, ["cancelled"], progress=progress) == 1
        assert seen and seen[0][0] == "req-7"
        assert seen[0][1].startswith("squidmesh-async") and seen[0][1] != loop_thread

        # errors come back as the sync method's
        with pytest.raises(sm.RunNotFoundError):
            await mesh.inspect_run_async("not-a-run")
        with pytest.raises(sm.UnknownWorkflowError):
            await mesh.start_run_async("nope")

        # a worker thread does the work, close_async stops it
        await mesh.worker_async(poll_interval=0.1, concurrency=1)
        last = await mesh.start_run_async(gated, {"n": 5})
        for _ in range(int(TIMEOUT / 0.05)):
            if (await mesh.explain_run_async(last.id)).reason == "paused_for_approval":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the worker did not take the run to its approval")
        await mesh.close_async()
        assert mesh._workers == [] and mesh._async.pool is None

    asyncio.run(scenario())


# --------------------------------------------------------------------------- never blocks


def _waiting_on_locks(url: str) -> int:
    """How many sessions of the test database wait for a lock right now."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def test_100_concurrent_twins_never_block_the_loop_and_the_pool_is_bounded(
    pg_database_url: str,
) -> None:
    threads = 4
    mesh = sm.Mesh(
        postgres.sqlalchemy_url(pg_database_url), workflows=[gated], async_threads=threads
    )
    mesh.migrate()
    run = mesh.start_run(gated, {"n": 1})
    holder = psycopg.connect(pg_database_url)  # holds the run's row lock
    holder.execute(
        "SELECT id FROM squidmesh.squidmesh_runs WHERE id = %s FOR UPDATE", (str(run.id),)
    )
    ticks = 0
    finished = 0
    observed: dict[str, int] = {}

    async def twin(i: int) -> None:
        nonlocal finished
        await mesh.send_event_async(run.id, "ping", i)  # needs the run's row lock
        finished += 1

    async def heartbeat_then_release() -> None:
        # Only a running loop gets here: if a twin blocked it, nothing would release the
        # lock and every twin would wait forever (the test would time out, not pass).
        nonlocal ticks
        while True:
            ticks += 1
            waiting = await asyncio.to_thread(_waiting_on_locks, pg_database_url)
            if waiting >= threads:
                break
            await asyncio.sleep(0.01)
        for _ in range(5):  # it stays at the pool's size: the other 96 calls queue
            ticks += 1
            observed["max_waiting"] = max(
                observed.get("max_waiting", 0),
                await asyncio.to_thread(_waiting_on_locks, pg_database_url),
            )
            await asyncio.sleep(0.01)
        observed["ticks_before_release"] = ticks
        observed["finished_before_release"] = finished
        holder.rollback()

    async def scenario() -> None:
        await asyncio.wait_for(
            asyncio.gather(heartbeat_then_release(), *(twin(i) for i in range(100))),
            TIMEOUT,
        )

    try:
        asyncio.run(scenario())
    finally:
        holder.close()
    assert observed["finished_before_release"] == 0  # all 100 were in flight at once
    assert observed["ticks_before_release"] >= 6
    assert observed["max_waiting"] == threads
    assert finished == 100
    try:
        events = [
            e
            for e in mesh.inspect_run(run.id, include_history=True).audit_events or ()
            if e.type == "event_received"
        ]
        assert len(events) == 100
    finally:
        mesh.close()
