"""``Transaction.write``: a whole state change, all or nothing, on every store.

PostgreSQL applies a batch with one call of ``squidmesh_write_v3`` (optionally without
an explicit transaction, ``storage/pg_write.py``); SQLite statement by statement on the
driver's cursor (``storage/sqlite_write.py``); the in-memory store through its own
methods (``write_batch``). All three must agree on what a batch writes and on when it
writes nothing.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.errors import ConcurrentChangeError, ConflictError, StorageError
from squidmesh.storage import sql
from squidmesh.storage.base import (
    ENTRY_MUTABLE_FIELDS,
    JobWrite,
    RunRecord,
    Store,
    WriteBatch,
)
from squidmesh.storage.sql import SqlStore, create_engine
from squidmesh.storage.sql_errors import is_transient
from tests.contract.test_store_contract import T0, add_runs, dump, full_entry, run_record
from tests.support import writes

LATER = T0 + timedelta(minutes=1)


def advanced(run: RunRecord, **fields: Any) -> RunRecord:
    """``run`` as a change leaves it: one version on, with ``fields`` changed."""
    return dataclasses.replace(run, version=run.version + 1, updated_at=LATER, **fields)


def write(
    store: Store, batch: WriteBatch, *, autocommit: bool = False, final: bool = False
) -> list[Job]:
    with store.transaction(autocommit=autocommit) as tx:
        return tx.write(batch, final=final)


def ident(job: Job) -> int:
    assert job.id is not None, job
    return job.id


def queued(store: Store, run_id: str) -> list[tuple[int | None, int | None, str | None]]:
    with store.transaction() as tx:
        return [(q.job.id, q.job.seq, q.worker) for q in tx.load_jobs(run_id)]


@pytest.fixture
def started(store: Store) -> tuple[RunRecord, Job]:
    """A run at version 0 with its first history entry and one queued job."""
    run = run_record(status="running")
    add_runs(store, run)
    with store.transaction() as tx:
        writes.insert_entries(tx, run.id, [full_entry(1, status="running", result=None)])
        (job,) = writes.insert_jobs(tx, [Job("step", run.id, 1, 1, run_at=T0)])
    return run, job


# final: the transaction's last write, which PostgreSQL sends with its COMMIT
@pytest.mark.parametrize("final", [False, True], ids=["then-commit", "final"])
@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_a_batch_writes_every_section(
    store: Store, started: tuple[RunRecord, Job], autocommit: bool, final: bool
) -> None:
    run, job = started
    moved = advanced(run, current_steps=["two"], waiting_on=[2], result={"so": "far"})
    done = full_entry(1, status="completed", result={"n": 1})
    attempt = Attempt(1, "completed", None, "2024-05-01T12:00:01+00:00", None, "w1", None)
    audit = AuditEvent("approved", "gate", "ops", "fine", {"k": [1]}, "2024-05-01T12:01:00")
    batch = WriteBatch(
        runs=[moved],
        entries_insert=[(run.id, full_entry(2, status="running", result=None))],
        entries_update=[(run.id, done)],
        attempts=[(run.id, 1, attempt)],
        audits=[(run.id, audit)],
        jobs_insert=[
            JobWrite(Job("step", run.id, 2, 1, run_at=LATER), "w1", LATER, replaces=job.id),
            JobWrite(Job("wake", run.id, 3, 1, run_at=LATER)),
        ],
    )

    jobs = write(store, batch, autocommit=autocommit, final=final)

    # The job carrying on keeps the row of the one it replaces; the new one gets an id.
    carried, fresh = jobs
    assert carried.id == job.id
    assert fresh.id is not None and fresh.id != job.id
    assert [(j.kind, j.seq, j.run_at) for j in jobs] == [("step", 2, LATER), ("wake", 3, LATER)]
    with store.transaction() as tx:
        assert tx.get_run(run.id) == moved
        assert tx.load_entries(run.id) == [done, full_entry(2, status="running", result=None)]
        assert tx.load_attempts(run.id) == {1: [attempt]}
        assert tx.load_audit(run.id) == [audit]
    assert queued(store, run.id) == [(job.id, 2, "w1"), (jobs[1].id, 3, None)]


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_a_batch_creates_a_run_with_what_it_starts_with(store: Store, autocommit: bool) -> None:
    # Starting a run is one write: the run, its first entries, audit event and job (on
    # PostgreSQL one call, so it needs no transaction around it).
    run = run_record(idempotency_key="order-7")
    first = full_entry(0, status="running", result=None)
    (job,) = write(
        store,
        WriteBatch(
            runs_insert=[run],
            entries_insert=[(run.id, first)],
            audits=[(run.id, AuditEvent("run_started"))],
            jobs_insert=[JobWrite(Job("activate", run.id, run_at=T0))],
        ),
        autocommit=autocommit,
    )
    with store.transaction() as tx:
        assert tx.get_run(run.id) == run
        assert tx.find_run_by_key(run.workflow, "order-7") == run
        assert tx.load_entries(run.id) == [first]
        assert [a.type for a in tx.load_audit(run.id)] == ["run_started"]
    assert queued(store, run.id) == [(job.id, None, None)]


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_a_run_created_twice_is_a_conflict_and_writes_nothing(
    store: Store, autocommit: bool
) -> None:
    # Two starts with one idempotency key race: the second write fails as a conflict
    # (the caller then returns the run the first created), leaving nothing behind.
    first = run_record(idempotency_key="order-7")
    write(store, WriteBatch(runs_insert=[first]))
    before = dump(store)
    for again in (run_record(idempotency_key="order-7"), dataclasses.replace(first, payload={})):
        with pytest.raises(ConflictError):
            write(
                store,
                WriteBatch(
                    runs_insert=[again],
                    audits=[(again.id, AuditEvent("run_started"))],
                    jobs_insert=[JobWrite(Job("activate", again.id, run_at=T0))],
                ),
                autocommit=autocommit,
            )
        assert dump(store) == before


def test_replacing_a_payload_needs_a_transaction(sql_store: SqlStore) -> None:
    # Without one, PostgreSQL would commit the payload and the rest of the batch
    # apart; SQLite always opens one (BEGIN IMMEDIATE), so the batch goes through.
    run = run_record()
    add_runs(sql_store, run)
    batch = WriteBatch(payloads=[(run.id, {"to": "elsewhere"})])
    if sql_store.dialect == "postgresql":
        with pytest.raises(StorageError, match="needs a transaction"):
            write(sql_store, batch, autocommit=True)
        expected = run.payload
    else:
        write(sql_store, batch, autocommit=True)
        expected = {"to": "elsewhere"}
    with sql_store.transaction() as tx:
        stored = tx.get_run(run.id)
    assert stored is not None and stored.payload == expected


def test_only_the_fields_a_change_alters_are_written(
    store: Store, started: tuple[RunRecord, Job]
) -> None:
    run, _ = started
    # A run's identity (what it runs, with what, from where) is fixed at creation; a
    # batch carrying other values for it does not rewrite them.
    tampered = advanced(run, status="completed", payload={"other": 1}, workflow="other")
    write(store, WriteBatch(runs=[tampered]))
    with store.transaction() as tx:
        stored = tx.get_run(run.id)
    assert stored is not None
    assert (stored.status, stored.version) == ("completed", 1)
    assert (stored.payload, stored.workflow) == (run.payload, run.workflow)


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_an_entry_update_writes_its_outcome_and_keeps_what_was_called(
    store: Store, started: tuple[RunRecord, Job], autocommit: bool
) -> None:
    run, _ = started
    # What the call recorded (kind, name, input, parent, loc, created_at) is fixed when
    # the entry is inserted: an update writes the outcome and progress only, so a
    # finished step does not send its input again.
    recorded = full_entry(1, status="running", result=None)
    done = full_entry(
        1,
        status="completed",
        result={"n": 1},
        error=None,
        order=7,
        attempts=3,
        meta={"lost": 1},
        compensation=None,
        wake_at=None,
        started_at="2024-05-01T12:00:03+00:00",
        completed_at="2024-05-01T12:00:04+00:00",
    )
    assert {
        f.name
        for f in dataclasses.fields(done)
        if getattr(done, f.name) != getattr(recorded, f.name)
    } == set(ENTRY_MUTABLE_FIELDS)
    other_call = dataclasses.replace(
        done,
        kind="event",
        name="other",
        input={"big": "x" * 10_000},
        parent=5,
        loc="elsewhere.py:1",
        created_at="2030-01-01T00:00:00+00:00",
    )
    write(store, WriteBatch(entries_update=[(run.id, other_call)]), autocommit=autocommit)
    with store.transaction() as tx:
        assert tx.load_entries(run.id) == [done]


# final: the transaction's last write, which PostgreSQL sends with its COMMIT
@pytest.mark.parametrize("final", [False, True], ids=["then-commit", "final"])
@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_a_version_conflict_writes_nothing(
    store: Store, started: tuple[RunRecord, Job], autocommit: bool, final: bool
) -> None:
    run, job = started
    write(store, WriteBatch(runs=[advanced(run)]))  # someone else's change: version 1
    before = dump(store)
    stale = WriteBatch(
        runs=[advanced(run, status="completed")],  # decided at version 0
        entries_insert=[(run.id, full_entry(2))],
        jobs_delete=[ident(job)],
        jobs_insert=[JobWrite(Job("step", run.id, 2, 1, run_at=LATER))],
    )
    with pytest.raises(ConcurrentChangeError):
        write(store, stale, autocommit=autocommit, final=final)
    assert dump(store) == before


def test_a_guard_holds_the_change_to_the_version_it_read(
    store: Store, started: tuple[RunRecord, Job]
) -> None:
    run, job = started
    other = run_record()
    add_runs(store, other)
    # Reading ``other`` at version 0 and writing only ``run``: fine while ``other`` stays.
    write(store, WriteBatch(runs=[advanced(run)], guards=[(other.id, 0)]))
    write(store, WriteBatch(runs=[advanced(other)]))
    before = dump(store)
    late = WriteBatch(
        runs=[advanced(advanced(run))], guards=[(other.id, 0)], jobs_delete=[ident(job)]
    )
    with pytest.raises(ConcurrentChangeError):
        write(store, late, autocommit=True)
    assert dump(store) == before


def test_a_guard_alone_writes_nothing_and_passes(
    store: Store, started: tuple[RunRecord, Job]
) -> None:
    run, _ = started
    before = dump(store)
    assert write(store, WriteBatch(guards=[(run.id, 0)]), autocommit=True) == []
    assert dump(store) == before
    with pytest.raises(ConcurrentChangeError):
        write(store, WriteBatch(guards=[(run.id, 5)]), autocommit=True)


def test_updating_a_missing_entry_writes_nothing(
    store: Store, started: tuple[RunRecord, Job]
) -> None:
    run, _ = started
    before = dump(store)
    batch = WriteBatch(runs=[advanced(run)], entries_update=[(run.id, full_entry(9))])
    with pytest.raises(StorageError) as caught:
        write(store, batch, autocommit=True)
    assert not isinstance(caught.value, ConcurrentChangeError)
    assert dump(store) == before


def test_carrying_on_a_job_that_is_gone_writes_nothing(
    store: Store, started: tuple[RunRecord, Job]
) -> None:
    run, job = started
    with store.transaction() as tx:
        writes.delete_job(tx, ident(job))  # another worker finished it
    before = dump(store)
    batch = WriteBatch(
        runs=[advanced(run)],
        jobs_insert=[JobWrite(Job("step", run.id, 2, 1), "w1", LATER, replaces=job.id)],
    )
    with pytest.raises(ConcurrentChangeError):
        write(store, batch, autocommit=True)
    assert dump(store) == before


class _Refused(Exception):
    """The caller's own failure inside a transaction."""


# SQLite begins a transaction on the driver and hands its connection to SQLAlchemy only
# when a statement needs one: a batch must commit, or roll back, with the transaction
# either way, whatever ran before it in the transaction.
@pytest.mark.parametrize("before", ["nothing", "a read", "the connection taken"])
@pytest.mark.parametrize("ends", ["committed", "in an error"])
def test_a_batch_ends_with_its_transaction_whatever_ran_before_it(
    store: Store, started: tuple[RunRecord, Job], before: str, ends: str
) -> None:
    run, _ = started
    moved = advanced(run, result="moved")
    try:
        with store.transaction() as tx:
            if before == "a read":
                assert tx.get_run(run.id) == run
            elif before == "the connection taken":
                assert tx.connection is not None or store.dialect == "memory"
            tx.write(WriteBatch(runs=[moved]))
            if ends == "in an error":
                raise _Refused
    except _Refused:
        pass
    with store.transaction() as tx:
        assert tx.get_run(run.id) == (moved if ends == "committed" else run)


def test_of_two_changes_decided_at_one_version_exactly_one_lands(store: Store) -> None:
    run = run_record(status="running")
    add_runs(store, run)
    mine = WriteBatch(runs=[advanced(run, result="mine")])
    theirs = WriteBatch(runs=[advanced(run, result="theirs")])
    write(store, mine, autocommit=True)
    with pytest.raises(ConcurrentChangeError):
        write(store, theirs, autocommit=True)
    with store.transaction() as tx:
        stored = tx.get_run(run.id)
    assert stored is not None and (stored.result, stored.version) == ("mine", 1)


@pytest.mark.postgres
def test_a_write_waits_for_a_concurrent_writer_then_sees_its_version(
    pg_migrated_url: str,
) -> None:
    """Two writers of one run at once on PostgreSQL: the second blocks on the first's row
    lock (seen in pg_stat_activity), and once the first commits, it finds the version
    moved on and writes nothing."""
    from tests.contract.conftest import pg_engine

    store = SqlStore(pg_engine(pg_migrated_url), owns_engine=True)
    try:
        run = run_record(status="running")
        add_runs(store, run)
        outcome: list[BaseException | list[Job]] = []

        def second() -> None:
            try:
                outcome.append(
                    write(store, WriteBatch(runs=[advanced(run, result="b")]), autocommit=True)
                )
            except BaseException as exc:  # reported to the test thread
                outcome.append(exc)

        with store.transaction() as tx:
            tx.write(WriteBatch(runs=[advanced(run, result="a")]))
            thread = threading.Thread(target=second)
            thread.start()
            with psycopg.connect(pg_migrated_url, autocommit=True) as watch:
                while not watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE '%squidmesh_write_v3%'"
                ).fetchone()[0]:  # type: ignore[index]
                    assert thread.is_alive(), outcome
        thread.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], ConcurrentChangeError)
        with store.transaction() as tx:
            stored = tx.get_run(run.id)
        assert stored is not None and (stored.result, stored.version) == ("a", 1)
    finally:
        store.close()


@pytest.mark.postgres
def test_a_write_reads_rows_by_key_however_many_are_stored(pg_migrated_url: str) -> None:
    """Each write touches its rows through their keys. The write function once joined
    its rows with a JSON recordset, which PostgreSQL estimates at 100 rows, and planned a
    scan of the whole entries (and runs) table: every step of a long run cost more than
    the one before. Counted from pg_stat_user_tables, after the writers' sessions ended
    (a session reports its counters when it ends)."""
    from tests.contract.conftest import pg_engine
    from tests.support.waiting import wait_for

    def counters() -> dict[str, tuple[int, int]]:
        with psycopg.connect(pg_migrated_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT relname, seq_scan, n_tup_upd FROM pg_stat_user_tables "
                "WHERE schemaname = 'squidmesh'"
            ).fetchall()
        return {name: (int(scans), int(updates)) for name, scans, updates in rows}

    setup = SqlStore(pg_engine(pg_migrated_url), owns_engine=True)
    run = run_record(status="running")
    others = [run_record() for _ in range(300)]
    add_runs(setup, run, *others)
    with setup.transaction() as tx:
        writes.insert_entries(tx, run.id, [full_entry(seq) for seq in range(3000)])
    setup.close()
    with psycopg.connect(pg_migrated_url, autocommit=True) as conn:
        conn.execute("ANALYZE squidmesh.squidmesh_runs")
        conn.execute("ANALYZE squidmesh.squidmesh_entries")
    before = counters()

    writer = SqlStore(pg_engine(pg_migrated_url), owns_engine=True)
    current = run
    for seq in range(20):
        nxt = advanced(current)
        batch = WriteBatch(
            runs=[nxt],
            guards=[(others[seq].id, 0)],
            entries_update=[(run.id, full_entry(seq, status="failed"))],
        )
        write(writer, batch, autocommit=True)
        current = nxt
    writer.close()

    def reported() -> dict[str, tuple[int, int]] | None:
        now = counters()
        done = now["squidmesh_entries"][1] >= before["squidmesh_entries"][1] + 20
        return now if done else None

    after = wait_for(reported, 30, "the writer's table counters")
    scans = {t: after[t][0] - before[t][0] for t in ("squidmesh_runs", "squidmesh_entries")}
    assert scans == {"squidmesh_runs": 0, "squidmesh_entries": 0}


@pytest.mark.postgres
def test_a_connection_that_wrote_without_a_transaction_goes_back_transactional(
    pg_migrated_url: str,
) -> None:
    """A batch written without BEGIN/COMMIT goes straight to a pooled psycopg connection
    in autocommit. That connection must return to the pool as the pool lent it: the next
    transaction on it (one connection in the pool, so the same one) must still be all or
    nothing, or a later change that fails half-way would leave its first half stored."""
    from tests.contract.conftest import pg_engine

    engine = pg_engine(pg_migrated_url)
    store = SqlStore(sa.create_engine(engine.url, pool_size=1, max_overflow=0), owns_engine=True)
    engine.dispose()
    try:
        run = run_record(status="running")
        add_runs(store, run)
        write(store, WriteBatch(runs=[advanced(run)]), autocommit=True)
        other = run_record()
        with pytest.raises(RuntimeError), store.transaction() as tx:
            writes.insert_run(tx, other)
            raise RuntimeError("the change fails after its first write")
        with store.transaction() as tx:
            assert tx.get_run(other.id) is None
            stored = tx.get_run(run.id)
        assert stored is not None and stored.version == 1
    finally:
        store.close()


def test_a_sqlite_database_another_writer_holds_is_a_transient_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite transactions begin with BEGIN IMMEDIATE, which waits busy_timeout for the
    # write lock: past it, the caller gets a StorageError a worker retries (transient),
    # and the pooled connection is left fit for the next transaction.
    monkeypatch.setattr(sql, "SQLITE_BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "locked.db"
    store = SqlStore(create_engine(f"sqlite:///{path}"), owns_engine=True)
    store.migrate()
    run = run_record(status="running")
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError) as caught:
            with store.transaction() as tx:
                tx.write(WriteBatch(runs_insert=[run]))
        assert "begin a transaction" in str(caught.value)
        assert "locked" in str(caught.value)
        assert is_transient(caught.value)
        blocker.rollback()
        with store.transaction() as tx:
            tx.write(WriteBatch(runs_insert=[run]))
        with store.transaction() as tx:
            assert tx.get_run(run.id) == run
    finally:
        blocker.close()
        store.close()


def test_a_sqlite_update_writes_no_index_page_for_a_value_it_keeps(tmp_path: Path) -> None:
    # SQLite rewrites an index's entry whenever an UPDATE sets one of its columns, even
    # to the value stored, and writes every page it touched to the WAL at commit. A
    # step keeps its run's status, and the job it carries on keeps its run and due
    # time: those values must cost no index page. Counted in WAL frames, from the file.
    path = tmp_path / "frames.db"
    store = SqlStore(create_engine(f"sqlite:///{path}"), owns_engine=True)
    wal = sqlite3.connect(path, isolation_level=None)
    try:
        store.migrate()
        run = run_record(status="running")
        add_runs(store, run)
        with store.transaction() as tx:
            (job,) = writes.insert_jobs(tx, [Job("step", run.id, 1, 1, run_at=T0)])

        def frames(batch: WriteBatch) -> int:
            busy = wal.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            assert busy == 0, "the test's checkpoint must empty the WAL"
            write(store, batch)
            return int(wal.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])

        kept = advanced(run)
        same = frames(
            WriteBatch(
                runs=[kept],
                jobs_insert=[JobWrite(Job("step", run.id, 2, 1, run_at=T0), replaces=job.id)],
            )
        )
        moved = frames(
            WriteBatch(
                runs=[advanced(kept, status="paused")],
                jobs_insert=[JobWrite(Job("step", run.id, 3, 1, run_at=LATER), replaces=job.id)],
            )
        )
        # the runs page and the jobs page; then also the pages of the indexes holding
        # a run's status (two) and a job's due time (one)
        assert same < moved, (same, moved)
        with store.transaction() as tx:
            stored = tx.get_run(run.id)
            assert stored is not None and (stored.status, stored.version) == ("paused", 2)
            assert [(q.job.seq, q.job.run_at) for q in tx.load_jobs(run.id)] == [(3, LATER)]
    finally:
        wal.close()
        store.close()
