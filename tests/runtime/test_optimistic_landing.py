from __future__ import annotations

# A worker lands a step of a run it holds in its cache without locking the run: the
# write itself checks the run's version. These tests make another Mesh (another cache,
# as another process would be) change the run while the step runs, and check the
# landing notices and lands again under the lock instead of overwriting that change.
# Which path a change took is read at the Store port: ``lock_run`` (or
# ``lock_run_with_history``) is the lock, and an optimistic landing never calls it.
import threading
from collections.abc import Callable
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.runtime.perform import Lease
from squidmesh.storage.base import RunRecord
from tests.runtime.support import MeshFactory, claim_all

HOOK: list[Callable[[], Any]] = []


@sm.step
def first() -> int:
    return 1


@sm.step
def meddled() -> int:
    for hook in HOOK:
        hook()
    return 2


@sm.step
def third() -> int:
    return 3


@sm.workflow
def three_steps():
    a = yield first()
    b = yield meddled()
    c = yield third()
    return a + b + c


def locks_taken(mesh: sm.Mesh, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The run ids a change locks (``lock_run``, or ``lock_run_with_history``, which
    some stores build on ``lock_run``: counted once), in order, from here on (every Mesh
    of the test: their transactions are of the same class)."""
    with mesh.store.transaction() as tx:
        transaction_class = type(tx)
    real, real_with_history = transaction_class.lock_run, transaction_class.lock_run_with_history
    locked: list[str] = []
    inside = threading.local()

    def lock_run(self: Any, run_id: str) -> RunRecord | None:
        if not getattr(inside, "counted", False):
            locked.append(run_id)
        return real(self, run_id)

    def lock_run_with_history(self: Any, run_id: str, known: int | None) -> Any:
        locked.append(run_id)
        inside.counted = True
        try:
            return real_with_history(self, run_id, known)
        finally:
            inside.counted = False

    monkeypatch.setattr(transaction_class, "lock_run", lock_run)
    monkeypatch.setattr(transaction_class, "lock_run_with_history", lock_run_with_history)
    return locked


def run_with_lease(mesh: sm.Mesh, factory: MeshFactory) -> None:
    """Drive jobs as a worker does: a lease, so landings are optimistic and eager."""
    lease = Lease("test-worker", 300)
    while True:
        jobs = claim_all(mesh.store, factory.clock())
        if not jobs:
            return
        for job in jobs:
            nxt: sm.Job | None = job
            while nxt is not None:
                nxt = mesh.runner.perform(nxt, lease)


def test_uncontended_run_lands_optimistically(
    mesh_factory: MeshFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    HOOK.clear()
    mesh = mesh_factory([three_steps], executor="database")
    run = mesh.start_run(three_steps)
    locked = locks_taken(mesh, monkeypatch)
    run_with_lease(mesh, mesh_factory)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result == 6
    assert [len(s.attempts) for s in done.step_runs or ()] == [1, 1, 1]
    # The activation locked the run once; the three steps' outcomes landed on the
    # cached row, checked by version, without taking the lock again.
    assert locked == [str(run.id)]


def test_a_worker_runs_a_sequential_run_from_one_claim(mesh_factory: MeshFactory) -> None:
    # Eager continuation: the transaction that records a step's outcome also begins the
    # next step and hands its job straight back to the worker, leased to it. The run's
    # only claimed job is its activation; no step job is ever up for claiming.
    HOOK.clear()
    mesh = mesh_factory([three_steps], executor="database")
    run = mesh.start_run(three_steps)
    lease = Lease("test-worker", 300)
    claimed = claim_all(mesh.store, mesh_factory.clock())
    assert [(j.kind, j.run_id) for j in claimed] == [("activate", str(run.id))]
    handed_back: list[tuple[str, int | None]] = []
    nxt: sm.Job | None = claimed[0]
    while nxt is not None:
        nxt = mesh.runner.perform(nxt, lease)
        if nxt is not None:
            handed_back.append((nxt.kind, nxt.seq))
            assert nxt.run_id == str(run.id)
            # Begun and leased to this worker: another worker's claim does not get it.
            assert claim_all(mesh.store, mesh_factory.clock()) == []
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.COMPLETED and done.result == 6
    step_seqs = [s.seq for s in done.step_runs or () if s.kind == "step"]
    assert handed_back == [("step", seq) for seq in step_seqs] and len(step_seqs) == 3
    assert claim_all(mesh.store, mesh_factory.clock()) == []  # no job left behind


def test_a_cancel_from_elsewhere_during_the_step_is_not_overwritten(
    mesh_factory: MeshFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_mesh = mesh_factory([three_steps], executor="database")
    operator_mesh = mesh_factory([three_steps], executor="database")
    run = worker_mesh.start_run(three_steps)
    locked = locks_taken(worker_mesh, monkeypatch)

    def cancel_elsewhere() -> None:
        operator_mesh.cancel_run(run.id, actor="ops", reason="stop")
        locked.append("cancelled elsewhere")

    HOOK[:] = [cancel_elsewhere]
    try:
        run_with_lease(worker_mesh, mesh_factory)
    finally:
        HOOK.clear()
    done = worker_mesh.inspect_run(run.id, include_history=True)
    # The cancel arrived while `meddled` was in flight: it finished, then the run was
    # cancelled; `third` never started.
    assert done.status is sm.RunStatus.CANCELLED
    names = [(s.name, s.status) for s in done.step_runs or ()]
    assert ("meddled", "completed") in names
    assert all(name != "third" for name, _ in names)
    types = [e.type for e in done.audit_events or ()]
    assert types.count("cancel_requested") == 1 and types.count("cancelled") == 1
    # The version check fired: the landing of `meddled`, tried without the lock, was
    # refused and made again under it (the one lock after the cancel committed).
    assert locked[locked.index("cancelled elsewhere") + 1 :] == [str(run.id)]


def test_an_approval_elsewhere_is_not_lost(
    mesh_factory: MeshFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    @sm.workflow(name="gate_and_step")
    def gate_and_step():
        decision, value = yield sm.join(sm.approval("ok"), meddled())
        return [decision.approved, value]

    worker_mesh = mesh_factory([gate_and_step], executor="database")
    operator_mesh = mesh_factory([gate_and_step], executor="database")
    run = worker_mesh.start_run(gate_and_step)
    locked = locks_taken(worker_mesh, monkeypatch)

    def approve_elsewhere() -> None:
        operator_mesh.approve_run(run.id, actor="ops")
        locked.append("approved elsewhere")

    HOOK[:] = [approve_elsewhere]
    try:
        run_with_lease(worker_mesh, mesh_factory)
    finally:
        HOOK.clear()
    done = worker_mesh.inspect_run(run.id)
    assert done.status is sm.RunStatus.COMPLETED
    assert done.result == [True, 2]
    # The landing of `meddled` was refused by the version check and made under the lock.
    assert locked[locked.index("approved elsewhere") + 1 :] == [str(run.id)]


@sm.workflow
def two_branches():
    a, b = yield sm.join(first(), meddled())
    return a + b


def _statements(mesh: sm.Mesh) -> tuple[list[str], Callable[[], None]]:
    """The SQL ``mesh``'s store sends from now on, and how to stop recording."""
    import sqlalchemy as sa

    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        sent.append(" ".join(statement.split()))

    engine = mesh.store.engine.engine  # type: ignore[attr-defined]
    sa.event.listen(engine, "before_cursor_execute", record)
    return sent, lambda: sa.event.remove(engine, "before_cursor_execute", record)


def test_a_claimed_step_of_a_cached_run_begins_without_locking_the_run(
    sql_mesh_factory: MeshFactory,
) -> None:
    # The activation begins one branch eagerly; the other waits for a claim. A worker
    # holding the run in its cache begins it with the write alone (its version check
    # standing in for the lock): every queued step on a flow-control queue starts so.
    HOOK.clear()
    mesh = sql_mesh_factory([two_branches], executor="database")
    run = mesh.start_run(two_branches)
    lease = Lease("test-worker", 300)
    (activation,) = claim_all(mesh.store, sql_mesh_factory.clock())
    eager = mesh.runner.perform(activation, lease)
    assert eager is not None
    assert mesh.runner.perform(eager, lease) is None  # the join waits for the other branch
    (claimed,) = claim_all(mesh.store, sql_mesh_factory.clock())
    sent, stop = _statements(mesh)
    try:
        assert mesh.runner.perform(claimed, lease) is None
    finally:
        stop()
    assert mesh.inspect_run(run.id).result == 3
    # Not read, not locked: the run row is only written (by the begin and the landing).
    reads = [s for s in sent if s.startswith("SELECT") and "squidmesh_runs." in s]
    assert reads == [], reads


def test_a_claimed_step_of_a_run_cancelled_elsewhere_does_not_begin(
    mesh_factory: MeshFactory,
) -> None:
    # The cache says the run is running; another Mesh cancelled it after the claim. The
    # begin's version check refuses, the begin is redone under the lock, and the step
    # never starts.
    HOOK.clear()
    worker_mesh = mesh_factory([two_branches], executor="database")
    operator_mesh = mesh_factory([two_branches], executor="database")
    run = worker_mesh.start_run(two_branches)
    lease = Lease("test-worker", 300)
    (activation,) = claim_all(worker_mesh.store, mesh_factory.clock())
    eager = worker_mesh.runner.perform(activation, lease)
    assert eager is not None
    assert worker_mesh.runner.perform(eager, lease) is None
    (claimed,) = claim_all(worker_mesh.store, mesh_factory.clock())
    operator_mesh.cancel_run(run.id, actor="ops", reason="stop")
    HOOK[:] = [lambda: pytest.fail("a step of a cancelled run began")]
    try:
        worker_mesh.runner.perform(claimed, lease)
    finally:
        HOOK.clear()
    done = worker_mesh.inspect_run(run.id, include_history=True)
    assert done.status is sm.RunStatus.CANCELLED
    attempts = {s.name: len(s.attempts) for s in done.step_runs or ()}
    assert (attempts["first"], attempts["meddled"]) == (1, 0)


def _driver_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What psycopg is asked to do from now on: each statement (its first words), and
    ``commit()`` for each commit of an open transaction. psycopg sends BEGIN itself
    before the first statement of a transaction, so a change made without one commits
    nothing."""
    import psycopg

    calls: list[str] = []
    execute, commit = psycopg.Cursor.execute, psycopg.Connection.commit

    def traced_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(" ".join(str(query).split()[:2]))
        return execute(self, query, *args, **kwargs)

    def traced_commit(self: Any) -> None:
        if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            calls.append("commit()")  # else there is nothing to commit, and none is sent
        commit(self)

    monkeypatch.setattr(psycopg.Cursor, "execute", traced_execute)
    monkeypatch.setattr(psycopg.Connection, "commit", traced_commit)
    return calls


def test_a_start_is_one_call_without_a_transaction(
    pg_mesh_factory: MeshFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starting a run writes its row, first job and audit event in one statement (the
    # create function): no BEGIN, no COMMIT, one round trip. A start with an
    # idempotency key reads the key first, still without a transaction.
    mesh = pg_mesh_factory([two_branches], executor="database")
    mesh.start_run(two_branches)  # warm: the schema check, the pool
    calls = _driver_calls(monkeypatch)
    run = mesh.start_run(two_branches)
    assert calls == ["SELECT squidmesh.squidmesh_create_v1(%s::json,"], calls
    calls.clear()
    keyed = mesh.start_run(two_branches, idempotency_key="k-1")
    assert [c.split()[0] for c in calls] == ["SELECT", "SELECT"], calls
    monkeypatch.undo()
    assert mesh.drain() > 0
    assert mesh.inspect_run(run.id).result == mesh.inspect_run(keyed.id).result == 3


@sm.workflow
def gated():
    yield sm.approval("go")
    return (yield first())


def test_a_locked_change_sends_its_commit_with_its_write(
    pg_mesh_factory: MeshFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An approval from a process that does not hold the run: BEGIN, the lock and the
    # history travel together (one round trip), then the write with the COMMIT (one
    # more): the transaction's own commit finds nothing left to do.
    worker = pg_mesh_factory([gated], executor="database")
    run = worker.start_run(gated)
    worker.drain()
    operator = pg_mesh_factory([gated], executor="database")
    assert operator.inspect_run(run.id).status is sm.RunStatus.PAUSED
    calls = _driver_calls(monkeypatch)
    operator.approve_run(run.id, actor="ops")
    statements = [
        c for c in calls if c.startswith(("SELECT id,", "SELECT CASE", "SELECT squidmesh."))
    ]
    assert statements == [
        "SELECT id,",
        "SELECT CASE",
        "SELECT squidmesh.squidmesh_write_v3(%s::json,",
    ], calls
    assert calls[calls.index(statements[-1]) + 1] == "COMMIT", calls
    assert "commit()" not in calls, calls
    monkeypatch.undo()
    worker.drain()
    assert worker.inspect_run(run.id).result == 1
