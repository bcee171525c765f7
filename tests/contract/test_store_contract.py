"""The ``Store`` contract: one suite, run on memory, SQLite and PostgreSQL.

The first part holds for every store (the ``store`` fixture is parametrized over all
three); the last part covers what only a real database has: migrations, schema checks,
driver errors, row locks and concurrent claims.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import squidmesh as sm
from squidmesh.core.history import Entry
from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.errors import ConflictError, SchemaOutOfDateError, StorageError
from squidmesh.storage import open_store
from squidmesh.storage import tables as t
from squidmesh.storage.base import (
    SCHEMA_VERSION,
    RunRecord,
    Store,
    Transaction,
    WriteBatch,
    run_id_prefix,
    run_id_prefix_range,
)
from squidmesh.storage.memory import InMemoryStore
from squidmesh.storage.sql import SqlStore, create_engine
from tests.contract.conftest import SQL_KINDS, pg_engine
from tests.support import postgres, writes

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
NESTED = {"a": {"b": [1, 2.5, None, True, {"c": "ünï©ødé ✓"}]}, "empty": {}, "n": None}


class Boom(Exception):
    """Raised by test code inside a transaction."""


def run_record(run_id: str | None = None, **fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "id": run_id or str(uuid.uuid4()),
        "workflow": "ring_errand",
        "trigger": "manual",
        "status": "pending",
        "payload": {"to": "Ana", "nested": NESTED},
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return RunRecord(**values)


def full_run(run_id: str | None = None) -> RunRecord:
    """A run with every field set to something other than its default."""
    return run_record(
        run_id,
        status="running",
        result={"ok": ["ü", 1]},
        error={"type": "builtins.ValueError", "message": "nope", "details": NESTED},
        reason="step_failed",
        current_steps=["charge", "ship"],
        waiting_on=[3, 4],
        replayed_from_run_id=str(uuid.uuid4()),
        forked_from_run_id=str(uuid.uuid4()),
        idempotency_key="order-42",
        schedule={"trigger": "nightly", "fire_time": "2024-05-01T00:00:00+00:00"},
        cancel_request={"actor": "ops", "reason": None, "compensate": True},
        pending_outcome={"status": "failed", "plan": [2, 1], "failure": {}},
        version=7,
        updated_at=T0 + timedelta(seconds=5),
        trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        parent_run_id=str(uuid.uuid4()),
        parent_seq=12,
        continued_from_run_id=str(uuid.uuid4()),
        continued_as_run_id=str(uuid.uuid4()),
    )


def full_entry(seq: int, **fields: Any) -> Entry:
    values: dict[str, Any] = {
        "seq": seq,
        "kind": "step",
        "name": f"step_{seq}",
        "status": "completed",
        "input": {"args": [seq, "x"], "kwargs": NESTED},
        "result": "résultat",
        "error": {"type": "E", "message": "m"},
        "parent": 0,
        "order": seq + 10,
        "attempts": 2,
        "meta": {"irreversible": True, "deep": NESTED},
        "compensation": {"status": "completed", "output": [None]},
        "loc": "flows.py:12",
        "wake_at": "2024-05-01T12:00:05+00:00",
        "created_at": "2024-05-01T12:00:00+00:00",
        "started_at": "2024-05-01T12:00:01+00:00",
        "completed_at": "2024-05-01T12:00:02+00:00",
    }
    values.update(fields)
    return Entry(**values)


def add_runs(store: Store, *runs: RunRecord) -> None:
    with store.transaction() as tx:
        for run in runs:
            writes.insert_run(tx, run)


@pytest.fixture
def run(store: Store) -> RunRecord:
    record = run_record()
    add_runs(store, record)
    return record


def dump(store: Store, cron_keys: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """Everything readable through the port (jobs via a claim that is rolled back)."""
    state: dict[str, Any] = {}
    try:
        with store.transaction() as tx:
            for rec in tx.list_runs(limit=10_000):
                state[rec.id] = (
                    rec,
                    tx.load_entries(rec.id),
                    tx.load_attempts(rec.id),
                    tx.load_audit(rec.id),
                    tx.load_events(rec.id),
                )
            state["next_job_time"] = tx.next_job_time()
            state["cron"] = [tx.last_cron_tick(*key) for key in cron_keys]
            far = datetime(9000, 1, 1, tzinfo=timezone.utc)
            state["jobs"] = tx.claim_jobs(now=far, limit=10_000, worker="dump", lease_until=far)
            raise Boom
    except Boom:
        pass
    return state


# --------------------------------------------------------------------------- runs


def test_dialect_names_the_store(store: Store) -> None:
    assert store.dialect in ("memory", "sqlite", "postgresql")
    store.check_schema()
    store.migrate()  # idempotent on a migrated store


def test_run_round_trips_every_field(store: Store) -> None:
    plain, full = run_record(), full_run()
    add_runs(store, plain, full)
    with store.transaction() as tx:
        assert tx.get_run(plain.id) == plain
        assert tx.get_run(full.id) == full
        assert tx.lock_run(full.id) == full
        got = tx.get_run(full.id)
    assert got is not None
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)


def test_timestamps_come_back_as_the_same_instant_in_utc(store: Store) -> None:
    offset = timezone(timedelta(hours=-5))
    rec = run_record(created_at=T0.astimezone(offset), updated_at=T0.replace(tzinfo=None))
    add_runs(store, rec)
    with store.transaction() as tx:
        got = tx.get_run(rec.id)
    assert got is not None
    assert got.created_at == T0 and got.created_at.tzinfo == timezone.utc
    # a naive datetime is taken to be UTC
    assert got.updated_at == T0 and got.updated_at.tzinfo == timezone.utc


def test_values_are_stored_as_json(store: Store) -> None:
    rec = run_record(payload={"pair": (1, 2), "1": "one"}, result=[("a", "b")])
    add_runs(store, rec)
    with store.transaction() as tx:
        got = tx.get_run(rec.id)
    assert got is not None and got.payload == {"pair": [1, 2], "1": "one"}
    assert got.result == [["a", "b"]]


def test_non_json_values_are_a_storage_error(store: Store) -> None:
    with pytest.raises(StorageError), store.transaction() as tx:
        writes.insert_run(tx, run_record(payload={"x": object()}))
    with store.transaction() as tx:
        assert tx.list_runs() == []


def test_missing_runs_read_as_none(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.get_run(str(uuid.uuid4())) is None
        assert tx.lock_run(str(uuid.uuid4())) is None
        assert tx.find_run_by_key("ring_errand", "nope") is None
        assert tx.load_entries("nope") == []
        assert tx.load_attempts("nope") == {}
        assert tx.load_audit("nope") == []
        assert tx.load_events("nope") == []


def test_a_new_payload_replaces_the_old_one_and_nothing_else(store: Store, run: RunRecord) -> None:
    # A start within a debounce window gives the pending run a new input.
    with store.transaction() as tx:
        tx.write(WriteBatch(payloads=[(run.id, {"to": "elsewhere", "n": [1, 2]})]))
    with store.transaction() as tx:
        got = tx.get_run(run.id)
    assert got is not None and got.payload == {"to": "elsewhere", "n": [1, 2]}
    assert dataclasses.replace(got, payload=run.payload) == run


def test_a_payload_for_a_missing_run_writes_nothing(store: Store, run: RunRecord) -> None:
    with pytest.raises(StorageError, match="does not exist"), store.transaction() as tx:
        tx.write(WriteBatch(payloads=[(str(uuid.uuid4()), {})], audits=[(run.id, AuditEvent("x"))]))
    with store.transaction() as tx:
        assert tx.load_audit(run.id) == []


def test_returned_records_are_copies(store: Store, run: RunRecord) -> None:
    with store.transaction() as tx:
        got = tx.get_run(run.id)
        assert got is not None
        got.payload["to"] = "changed"
        got.current_steps.append("x")
        entries = [full_entry(0)]
        writes.insert_entries(tx, run.id, entries)
        entries[0].meta["x"] = 1
        loaded = tx.load_entries(run.id)
        loaded[0].meta["y"] = 2
    with store.transaction() as tx:
        assert tx.get_run(run.id) == run
        assert tx.load_entries(run.id) == [full_entry(0)]


def test_find_run_by_key(store: Store) -> None:
    first = run_record(idempotency_key="k1")
    other_workflow = run_record(workflow="other", idempotency_key="k1")
    no_keys = [run_record(), run_record()]  # NULL keys never collide
    add_runs(store, first, other_workflow, *no_keys)
    with store.transaction() as tx:
        assert tx.find_run_by_key("ring_errand", "k1") == first
        assert tx.find_run_by_key("other", "k1") == other_workflow
        assert tx.find_run_by_key("ring_errand", "k2") is None
    with pytest.raises(ConflictError), store.transaction() as tx:
        writes.insert_run(tx, run_record(idempotency_key="k1"))


def test_list_children_finds_the_runs_a_run_started_oldest_first(store: Store) -> None:
    parent, other = run_record(), run_record()
    kids = [
        run_record(parent_run_id=parent.id, parent_seq=3, created_at=T0 + timedelta(seconds=2)),
        run_record(parent_run_id=parent.id, created_at=T0 + timedelta(seconds=1)),  # detached
        run_record(parent_run_id=parent.id, parent_seq=9, created_at=T0 + timedelta(seconds=3)),
    ]
    stranger = run_record(parent_run_id=other.id, parent_seq=1)
    add_runs(store, parent, other, *kids, stranger)
    with store.transaction() as tx:
        found = tx.list_children(parent.id)
        assert [r.id for r in found] == [kids[1].id, kids[0].id, kids[2].id]
        assert [r.parent_seq for r in found] == [None, 3, 9]
        assert [r.id for r in tx.list_children(parent.id, limit=2)] == [kids[1].id, kids[0].id]
        assert tx.list_children(other.id) == [stranger]
        assert tx.list_children(stranger.id) == []


def test_load_published_gives_the_latest_value_of_each_name(store: Store, run: RunRecord) -> None:
    def published(seq: int, name: str, value: Any) -> Entry:
        return Entry(seq=seq, kind="publish", name=name, status="completed", result=value)

    other = run_record()
    add_runs(store, other)
    with store.transaction() as tx:
        writes.insert_entries(
            tx,
            run.id,
            [
                published(0, "progress", {"done": 0, "of": 10}),
                full_entry(1, result="not published"),
                published(2, "status", "charging"),
                published(3, "progress", {"done": 7, "of": 10, "deep": NESTED}),
                published(4, "none", None),
            ],
        )
        writes.insert_entries(tx, other.id, [published(0, "progress", "someone else's")])
    with store.transaction() as tx:
        found = tx.load_published(run.id)
        assert found == {
            "progress": {"done": 7, "of": 10, "deep": NESTED},
            "status": "charging",
            "none": None,
        }
        assert list(found) == ["progress", "status", "none"]
        assert tx.load_published(str(uuid.uuid4())) == {}


def test_a_run_continued_as_new_records_its_successor(store: Store) -> None:
    """A state change writes a run's mutable fields, continued_as_run_id among them (the
    lineage a child or a continuation got at creation stays as it was)."""
    from squidmesh.storage.base import WriteBatch

    run = run_record(parent_run_id=str(uuid.uuid4()), parent_seq=4)
    add_runs(store, run)
    changed = dataclasses.replace(
        run,
        status="completed",
        reason="continued_as_new",
        continued_as_run_id=str(uuid.uuid4()),
        version=run.version + 1,
    )
    with store.transaction() as tx:
        tx.write(WriteBatch(runs=[changed]))
    with store.transaction() as tx:
        assert tx.get_run(run.id) == changed


def test_duplicate_run_id_is_a_conflict(store: Store, run: RunRecord) -> None:
    with pytest.raises(ConflictError) as caught, store.transaction() as tx:
        writes.insert_run(tx, run_record(run.id))
    assert f"run {run.id}" in str(caught.value)


def test_list_runs_newest_first_with_filters(store: Store) -> None:
    tied = T0 + timedelta(minutes=5)
    records = [
        run_record(created_at=T0 + timedelta(minutes=1)),
        run_record(created_at=T0 + timedelta(minutes=2), status="completed"),
        run_record(created_at=T0 + timedelta(minutes=3), workflow="other"),
        run_record(created_at=T0 + timedelta(minutes=4), workflow="other", status="completed"),
        run_record("00000000-0000-4000-8000-000000000001", created_at=tied),
        run_record("ffffffff-0000-4000-8000-000000000001", created_at=tied),
    ]
    add_runs(store, *records)
    r1, r2, r3, r4, low, high = records

    def ids(**filters: Any) -> list[str]:
        with store.transaction() as tx:
            return [r.id for r in tx.list_runs(**filters)]

    assert ids() == [high.id, low.id, r4.id, r3.id, r2.id, r1.id]  # ties: id descending
    assert ids(status="completed") == [r4.id, r2.id]
    assert ids(workflow="other") == [r4.id, r3.id]
    assert ids(workflow="other", status="pending") == [r3.id]
    assert ids(limit=2) == [high.id, low.id]
    assert ids(limit=0) == []
    assert ids(before=r3.created_at) == [r2.id, r1.id]  # strictly before
    assert ids(before=tied, status="pending") == [r3.id, r1.id]
    assert ids(status="failed") == []
    with store.transaction() as tx:
        assert tx.list_runs(limit=1)[0] == high


def test_run_ids_with_prefix_is_an_exact_prefix_match(store: Store) -> None:
    ids = [
        "d506e45a-20fa-4e20-bd59-732b7856905b",
        "d506e45a-2f00-4000-8000-000000000000",
        "d506e45b-0000-4000-8000-000000000000",
        "d506e459-ffff-4fff-bfff-ffffffffffff",
        "d506e45f-0000-4000-8000-000000000000",
        "d506e460-0000-4000-8000-000000000000",
        "ffffffff-ffff-4fff-bfff-ffffffffffff",
    ]
    add_runs(store, *(run_record(run_id) for run_id in reversed(ids)))

    def find(prefix: str, limit: int = 10) -> list[str]:
        with store.transaction() as tx:
            return tx.run_ids_with_prefix(prefix, limit)

    assert find("d506e45a") == ids[:2]  # in id order, neighbours on both sides excluded
    assert find("d506e45a-2") == ids[:2]
    assert find("d506e45a-20") == ids[:1]
    assert find("d506e45a-") == ids[:2]
    assert find("d506e45f") == [ids[4]]  # "f" carries: the range ends before d506e460
    assert find("d506e45") == sorted(ids[:5])
    assert find("ffff") == [ids[6]]  # the bound after "f" is "g"
    assert find(ids[0]) == [ids[0]]
    assert find("d506e45", limit=2) == sorted(ids[:5])[:2]
    assert find("0") == []
    assert find("d506e45a", limit=0) == []


@pytest.mark.postgres
def test_run_id_prefix_lookup_is_a_primary_key_range_scan(pg_migrated_url: str) -> None:
    from squidmesh.storage.base import run_id_prefix_range
    from squidmesh.storage.sql_queries import queries_for

    engine = pg_engine(pg_migrated_url)
    try:
        store = SqlStore(engine)
        add_runs(store, *(run_record() for _ in range(200)))
        query = queries_for("postgresql").run_ids_in_range
        compiled = query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": False})
        with store.transaction() as tx:
            conn = tx.connection
            conn.exec_driver_sql("ANALYZE squidmesh.squidmesh_runs")
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = (
                conn.exec_driver_sql(
                    "EXPLAIN " + str(compiled),
                    dict(zip(("low", "high"), run_id_prefix_range("d506e45a"), strict=True), n=10),
                )
                .scalars()
                .all()
            )
        text = "\n".join(plan)
        # Both bounds are index conditions of the primary key: no scan of other rows.
        assert "Index Only Scan using squidmesh_runs_pkey" in text, text
        assert "Index Cond: ((id >= 'd506e45a'::text) AND (id < 'd506e45b'::text))" in text, text
    finally:
        engine.dispose()


def test_search_runs_matches_every_filter_newest_first(store: Store) -> None:
    def at(minutes: int) -> datetime:
        return T0 + timedelta(minutes=minutes)

    a = run_record("1a2b3c4d-0000-4000-8000-000000000001", created_at=at(1))
    b = run_record(
        "1a2b3c4d-5e00-4000-8000-000000000002",
        created_at=at(2),
        status="paused",
        current_steps=["council_vote"],
        idempotency_key="order-7",
    )
    c = run_record(
        "1a2b3c4e-0000-4000-8000-000000000003",
        created_at=at(3),
        trigger="nightly",
        status="running",
        current_steps=["march", "council_vote"],
    )
    d = run_record(
        "ffffffff-0000-4000-8000-000000000004",
        created_at=at(4),
        workflow="other",
        idempotency_key="order-7",
        status="completed",
    )
    # A finished run keeps no current steps; this row says it does, to prove the step
    # filter only ever looks at unfinished runs (the status index narrows the scan).
    e = run_record(
        "0fffffff-0000-4000-8000-000000000005",
        created_at=at(5),
        status="failed",
        current_steps=["council_vote"],
    )
    add_runs(store, a, b, c, d, e)

    def ids(**filters: Any) -> list[str]:
        with store.transaction() as tx:
            return [r.id for r in tx.search_runs(**filters)]

    assert ids() == [e.id, d.id, c.id, b.id, a.id]
    assert ids(trigger="nightly") == [c.id]
    assert ids(idempotency_key="order-7") == [d.id, b.id]
    assert ids(idempotency_key="order-7", workflow="ring_errand") == [b.id]
    assert ids(step="council_vote") == [c.id, b.id]
    assert ids(step="march") == [c.id]
    assert ids(step="counc") == []  # names match whole, not in part
    assert ids(id_prefix="1a2b3c4d") == [b.id, a.id]
    assert ids(id_prefix="1a2b3c4d-5e") == [b.id]
    assert ids(id_prefix="1a2b3c4") == [c.id, b.id, a.id]
    assert ids(id_prefix="f") == [d.id]  # "f" is the last digit: the range ends at "g"
    assert ids(id_prefix="0") == [e.id]
    assert ids(id_prefix="2") == []
    assert ids(id_prefix=d.id) == [d.id]
    assert ids(status="paused", step="council_vote") == [b.id]
    assert ids(workflow="ring_errand", status="pending") == [a.id]
    assert ids(limit=2) == [e.id, d.id]
    assert ids(before=c.created_at, before_id=c.id, id_prefix="1a2b3c4") == [b.id, a.id]
    assert ids(before=c.created_at) == [b.id, a.id]
    with store.transaction() as tx:
        assert tx.search_runs(trigger="nightly") == [c]


def test_search_runs_pages_through_ties_with_the_keyset(store: Store) -> None:
    same = T0 + timedelta(minutes=1)
    records = [run_record(created_at=same, trigger="t") for _ in range(5)]
    add_runs(store, *records, run_record(created_at=same, trigger="other"))
    seen: list[str] = []
    cursor: RunRecord | None = None
    while True:
        with store.transaction() as tx:
            page = tx.search_runs(
                trigger="t",
                limit=2,
                before=cursor.created_at if cursor else None,
                before_id=cursor.id if cursor else None,
            )
        if not page:
            break
        seen.extend(r.id for r in page)
        cursor = page[-1]
    assert seen == sorted((r.id for r in records), reverse=True)


def test_count_runs_by_status(store: Store) -> None:
    add_runs(
        store,
        *[run_record(status="completed") for _ in range(5)],
        *[run_record(status="paused", workflow="other") for _ in range(2)],
        run_record(status="paused"),
        run_record(status="failed", workflow="other"),
    )
    every = {
        "pending": 0,
        "running": 0,
        "retrying": 0,
        "paused": 3,
        "suspended": 0,
        "cancelling": 0,
        "cancelled": 0,
        "failed": 1,
        "completed": 5,
    }
    with store.transaction() as tx:
        assert tx.count_runs() == every
        assert tx.count_runs(workflow="other") == {**every, "paused": 2, "completed": 0}
        assert tx.count_runs(workflow="nobody") == dict.fromkeys(every, 0)
        # Capped: each count stops at the limit.
        assert tx.count_runs(limit=2) == {**every, "paused": 2, "completed": 2}
        assert tx.count_runs(limit=2, workflow="ring_errand") == {
            **every,
            "paused": 1,
            "failed": 0,
            "completed": 2,
        }
        assert tx.count_runs(limit=0) == dict.fromkeys(every, 0)


def test_run_id_prefix_is_canonical() -> None:
    assert run_id_prefix("1A2B3C4D5E") == "1a2b3c4d-5e"
    assert run_id_prefix(" 1a2b-3c4d5e ") == "1a2b3c4d-5e"
    assert (
        run_id_prefix("1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d") == "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
    )
    whole = str(uuid.uuid4())
    assert run_id_prefix(whole) == whole
    assert run_id_prefix("12345678") == "12345678"
    assert run_id_prefix("123456789") == "12345678-9"
    for nothing in ("", "-", "xyz", "1a2b'--", whole + "0"):
        assert run_id_prefix(nothing) is None
    assert run_id_prefix_range("1a2b") == ("1a2b", "1a2c")
    assert run_id_prefix_range("1a29") == ("1a29", "1a2a")
    assert run_id_prefix_range("1a2f") == ("1a2f", "1a2g")


# --------------------------------------------------------------------------- history


def test_entries_round_trip_in_seq_order(store: Store, run: RunRecord) -> None:
    minimal = Entry(seq=1, kind="sleep", name="nap")
    nulls = Entry(seq=2, kind="step", name="n", input=None, result=None, meta={})
    with store.transaction() as tx:
        writes.insert_entries(tx, run.id, [full_entry(3), minimal])
        writes.insert_entries(tx, run.id, [full_entry(0), nulls])
        writes.insert_entries(tx, run.id, [])
    with store.transaction() as tx:
        assert tx.load_entries(run.id) == [full_entry(0), minimal, nulls, full_entry(3)]


def test_entry_json_values_of_every_shape(store: Store, run: RunRecord) -> None:
    values: list[Any] = [0, -1.5, "", "日本語", True, False, [], {}, [None], NESTED, 10**15]
    entries = [Entry(seq=i, kind="step", name="v", result=v, input=v) for i, v in enumerate(values)]
    with store.transaction() as tx:
        writes.insert_entries(tx, run.id, entries)
    with store.transaction() as tx:
        loaded = tx.load_entries(run.id)
    assert [e.result for e in loaded] == values
    assert [type(e.result) for e in loaded] == [type(v) for v in values]


def test_update_entries_overwrites_their_outcome(store: Store, run: RunRecord) -> None:
    updated = [full_entry(0, name="a", parent=None), full_entry(1, name="b", error=None)]
    # as each was recorded when called (what test_write_contract shows an update keeps)
    called = [
        Entry(e.seq, e.kind, e.name, input=e.input, parent=e.parent, loc=e.loc) for e in updated
    ]
    for entry, done in zip(called, updated, strict=True):
        entry.created_at = done.created_at
    with store.transaction() as tx:
        writes.insert_entries(tx, run.id, called)
    with store.transaction() as tx:
        writes.update_entries(tx, run.id, updated)
        writes.update_entries(tx, run.id, [])
    with store.transaction() as tx:
        assert tx.load_entries(run.id) == updated


def test_entry_key_violations_are_storage_errors(store: Store, run: RunRecord) -> None:
    with store.transaction() as tx:
        writes.insert_entries(tx, run.id, [Entry(0, "step", "a")])
    with pytest.raises(ConflictError), store.transaction() as tx:
        writes.insert_entries(tx, run.id, [Entry(1, "step", "b"), Entry(0, "step", "a")])
    # A run that does not exist is no duplicate: a StorageError, but no conflict.
    with pytest.raises(StorageError) as caught, store.transaction() as tx:
        writes.insert_entries(tx, str(uuid.uuid4()), [Entry(0, "step", "a")])
    assert not isinstance(caught.value, ConflictError)
    with pytest.raises(StorageError), store.transaction() as tx:
        writes.update_entries(tx, run.id, [Entry(0, "step", "a"), Entry(5, "step", "missing")])
    with store.transaction() as tx:
        assert tx.load_entries(run.id) == [Entry(0, "step", "a")]


# --------------------------------------------------------------------------- attempts, audit


def test_attempts_insert_replace_and_load(store: Store, run: RunRecord) -> None:
    failed = Attempt(1, "failed", {"type": "E", "details": NESTED}, "2024-05-01T12:00:00", "x")
    with store.transaction() as tx:
        writes.save_attempt(tx, run.id, 3, Attempt(2, "running", started_at="s2"))
        writes.save_attempt(tx, run.id, 3, Attempt(1, "running", started_at="s1"))
        writes.save_attempt(tx, run.id, 0, Attempt(1, "completed"))
    with store.transaction() as tx:
        writes.save_attempt(tx, run.id, 3, failed)  # replaces attempt 1 of seq 3
    with store.transaction() as tx:
        assert tx.load_attempts(run.id) == {
            0: [Attempt(1, "completed")],
            3: [failed, Attempt(2, "running", started_at="s2")],
        }
    with pytest.raises(StorageError), store.transaction() as tx:
        writes.save_attempt(tx, str(uuid.uuid4()), 0, Attempt(1, "running"))


def test_a_heartbeat_writes_the_running_row_of_an_attempt_that_has_none(
    store: Store, run: RunRecord
) -> None:
    # A first attempt has no row while it runs: its first saved heartbeat writes one,
    # later heartbeats update it while it runs, and an ended attempt keeps its row.
    with store.transaction() as tx:
        writes.insert_entries(
            tx,
            run.id,
            [
                Entry(0, "step", "a", status="running", attempts=1),
                Entry(1, "step", "b", status="completed", attempts=1),
            ],
        )
    beat = Attempt(1, "running", started_at="s1", worker="w1", heartbeat={"details": 1})
    with store.transaction() as tx:
        assert tx.record_heartbeat(run.id, 0, beat) is True
    with store.transaction() as tx:
        assert tx.load_attempts(run.id) == {0: [beat]}
    later = dataclasses.replace(beat, worker="ignored", heartbeat={"details": 2})
    with store.transaction() as tx:
        assert tx.record_heartbeat(run.id, 0, later) is True
    with store.transaction() as tx:
        assert tx.load_attempts(run.id) == {
            0: [dataclasses.replace(beat, heartbeat=later.heartbeat)]
        }
    ended = Attempt(1, "completed", None, "s1", "f1", worker="w1", heartbeat={"details": 2})
    with store.transaction() as tx:
        writes.save_attempt(tx, run.id, 0, ended)
    with store.transaction() as tx:
        assert (
            tx.record_heartbeat(run.id, 0, dataclasses.replace(beat, heartbeat={"x": 3})) is False
        )
        # a step that does not run, or that the run does not have, gets nothing
        assert tx.record_heartbeat(run.id, 1, beat) is False
        assert tx.record_heartbeat(run.id, 7, beat) is False
        assert tx.record_heartbeat(str(uuid.uuid4()), 0, beat) is False
    with store.transaction() as tx:
        assert tx.load_attempts(run.id) == {0: [ended]}


def test_audit_events_keep_insertion_order(store: Store, run: RunRecord) -> None:
    events = [
        AuditEvent("run_started", at="2024-05-01T12:00:00+00:00"),
        AuditEvent("paused", step="review", actor="ana", comment="ünï", metadata=NESTED, at="b"),
        AuditEvent("approved", step="review", actor="bob", metadata={}, at="a"),
    ]
    with store.transaction() as tx:
        for event in events[:2]:
            writes.add_audit(tx, run.id, event)
    with store.transaction() as tx:
        writes.add_audit(tx, run.id, events[2])
        assert tx.load_audit(run.id) == events


# --------------------------------------------------------------------------- events


def test_buffered_events_add_load_delete(store: Store, run: RunRecord) -> None:
    other = run_record()
    add_runs(store, other)
    with store.transaction() as tx:
        first = tx.add_event(run.id, "paid", {"amount": 3, "nested": NESTED}, T0)
        second = tx.add_event(run.id, "shipped", None, T0 + timedelta(seconds=1))
        third = tx.add_event(run.id, "paid", [1, "ü"], T0)
        foreign = tx.add_event(other.id, "paid", 1, T0)
    assert first < second < third < foreign
    with store.transaction() as tx:
        loaded = tx.load_events(run.id)
        assert [(e.id, e.name, e.data) for e in loaded] == [
            (first, "paid", {"amount": 3, "nested": NESTED}),
            (second, "shipped", None),
            (third, "paid", [1, "ü"]),
        ]
        tx.delete_events(run.id, [first, third, foreign])  # foreign belongs to another run
        tx.delete_events(run.id, [])
    with store.transaction() as tx:
        assert [e.id for e in tx.load_events(run.id)] == [second]
        assert [e.id for e in tx.load_events(other.id)] == [foreign]
    with pytest.raises(StorageError), store.transaction() as tx:
        tx.add_event(str(uuid.uuid4()), "x", None, T0)


# --------------------------------------------------------------------------- jobs


def test_insert_jobs_returns_ids_and_defaults_run_at(store: Store, run: RunRecord) -> None:
    before = datetime.now(timezone.utc)
    with store.transaction() as tx:
        assert writes.insert_jobs(tx, []) == []
        jobs = writes.insert_jobs(
            tx,
            [
                Job("activate", run.id),
                Job("step", run.id, seq=2, attempt=3, run_at=T0, data={"n": NESTED}),
                Job("cron", data={"workflow": "w"}),
            ],
        )
        (single,) = writes.insert_jobs(tx, [Job("compensate", run.id, seq=1)])
    after = datetime.now(timezone.utc)
    ids = [job.id for job in jobs]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 3
    assert single.id is not None and single.id > max(i for i in ids if i is not None)
    assert jobs[0].run_at is not None and before <= jobs[0].run_at <= after
    assert jobs[1] == Job(
        "step", run.id, seq=2, attempt=3, run_at=T0, data={"n": NESTED}, id=ids[1]
    )
    assert jobs[2].run_id is None and jobs[2].data == {"workflow": "w"}


def test_claim_takes_due_jobs_in_order_and_respects_leases(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.claim_jobs(now=T0, limit=10, worker="w1", lease_until=T0) == []
        late, early, future, also_early = writes.insert_jobs(
            tx,
            [
                Job("activate", "r1", run_at=T0 - timedelta(seconds=1)),
                Job("activate", "r2", run_at=T0 - timedelta(seconds=9)),
                Job("activate", "r3", run_at=T0 + timedelta(seconds=60)),
                Job("activate", "r4", run_at=T0 - timedelta(seconds=9)),
            ],
        )
    lease = T0 + timedelta(seconds=30)
    with store.transaction() as tx:
        claimed = tx.claim_jobs(now=T0, limit=2, worker="w1", lease_until=lease)
        assert claimed == [early, also_early]  # (run_at, id) order, limit respected
    with store.transaction() as tx:
        assert tx.claim_jobs(now=T0, limit=10, worker="w2", lease_until=lease) == [late]
        # leased jobs stay leased until their lease runs out
        assert (
            tx.claim_jobs(now=T0 + timedelta(seconds=29), limit=10, worker="w2", lease_until=lease)
            == []
        )
    with store.transaction() as tx:
        # at T0+60 the future job is due and every lease has expired
        again = tx.claim_jobs(
            now=T0 + timedelta(seconds=60),
            limit=10,
            worker="w3",
            lease_until=T0 + timedelta(hours=1),
        )
        assert again == [early, also_early, late, future]


def test_renew_lease_only_for_the_lease_holder(store: Store) -> None:
    with store.transaction() as tx:
        a, b = writes.insert_jobs(
            tx, [Job("activate", "r1", run_at=T0), Job("activate", "r2", run_at=T0)]
        )
        tx.claim_jobs(now=T0, limit=10, worker="w1", lease_until=T0 + timedelta(seconds=10))
    assert a.id is not None and b.id is not None
    with store.transaction() as tx:
        tx.renew_lease([a.id, b.id], "w1", T0 + timedelta(seconds=100))
        tx.renew_lease([a.id], "intruder", T0 + timedelta(seconds=11))
        tx.renew_lease([], "w1", T0)
    with store.transaction() as tx:
        at = T0 + timedelta(seconds=50)
        assert tx.claim_jobs(now=at, limit=10, worker="w2", lease_until=at) == []
        assert tx.next_job_time() == T0 + timedelta(seconds=100)


def test_delete_job_and_next_job_time(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.next_job_time() is None
        a, b = writes.insert_jobs(
            tx,
            [
                Job("activate", "r1", run_at=T0 + timedelta(seconds=5)),
                Job("activate", "r2", run_at=T0),
            ],
        )
        assert tx.next_job_time() == T0
    assert a.id is not None and b.id is not None
    with store.transaction() as tx:
        tx.claim_jobs(now=T0, limit=1, worker="w", lease_until=T0 + timedelta(seconds=30))
        # the leased job is claimable again at its lease end; the other one earlier
        assert tx.next_job_time() == T0 + timedelta(seconds=5)
        writes.delete_job(tx, a.id)
        assert tx.next_job_time() == T0 + timedelta(seconds=30)
        writes.delete_job(tx, b.id)
        writes.delete_job(tx, b.id)  # deleting twice is harmless
        assert tx.next_job_time() is None


def test_count_ready_jobs_counts_due_unleased_jobs(store: Store) -> None:
    # The squidmesh.jobs.ready gauge: the backlog no worker has claimed yet.
    with store.transaction() as tx:
        assert tx.count_ready_jobs(T0) == 0
        *_, parked = writes.insert_jobs(
            tx,
            [
                Job("activate", "r1", run_at=T0 - timedelta(seconds=1)),
                Job("activate", "r2", run_at=T0 + timedelta(seconds=60)),
                Job("activate", "r3", run_at=T0 - timedelta(seconds=5)),
                Job("activate", "r4", run_at=T0 - timedelta(seconds=9)),
            ],
        )
        assert tx.count_ready_jobs(T0) == 3
    assert parked.id is not None
    with store.transaction() as tx:
        # claim order is (run_at, id): the parked-to-be job, then the leased one
        tx.claim_jobs(now=T0, limit=2, worker="w", lease_until=T0 + timedelta(seconds=30))
        assert tx.release_job(parked.id, run_at=T0, failure="boom", park_after=1)
    with store.transaction() as tx:
        assert tx.count_ready_jobs(T0) == 1  # r1; r3 is leased, r4 parked, r2 not due
        # once the lease runs out the job is ready again; the later job falls due
        assert tx.count_ready_jobs(T0 + timedelta(seconds=60)) == 3
        assert tx.count_ready_jobs(T0 + timedelta(days=365 * 100)) == 3


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_concurrent_claimers_never_share_a_job(store: Store, autocommit: bool) -> None:
    # Workers that declare no queue claim without a transaction around the claim (one
    # statement on PostgreSQL): it must hold the same guarantee.
    with store.transaction() as tx:
        writes.insert_jobs(tx, [Job("activate", f"r{i}", run_at=T0) for i in range(200)])
    start = threading.Barrier(4)
    taken: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def claimer(slot: int) -> None:
        try:
            start.wait()
            while True:
                with store.transaction(autocommit=autocommit) as tx:
                    got = tx.claim_jobs(
                        now=T0, limit=7, worker=f"w{slot}", lease_until=T0 + timedelta(hours=1)
                    )
                if not got:
                    return
                taken[slot].extend(job.id for job in got if job.id is not None)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    every = [job_id for slot in taken for job_id in slot]
    assert len(every) == 200 and len(set(every)) == 200


# --------------------------------------------------------------------------- cron, retention


def test_cron_ticks_fire_once(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.last_cron_tick("w", "nightly") is None
        tx.add_cron_tick("w", "nightly", T0, "r1")
        tx.add_cron_tick("w", "nightly", T0 + timedelta(days=1), "r2")
        tx.add_cron_tick("w", "hourly", T0 + timedelta(days=9), "r3")
        tx.add_cron_tick("other", "nightly", T0 + timedelta(days=9), "r4")
    # the same tick again violates the unique constraint (rolling back its run)
    with pytest.raises(ConflictError), store.transaction() as tx:
        writes.insert_run(tx, run_record())
        tx.add_cron_tick("w", "nightly", T0.astimezone(timezone(timedelta(hours=2))), "r5")
    with store.transaction() as tx:
        assert tx.last_cron_tick("w", "nightly") == T0 + timedelta(days=1)
        assert tx.list_runs() == []


def test_delete_runs_removes_everything_recorded_for_them(store: Store) -> None:
    doomed, kept = run_record(idempotency_key="again"), run_record()
    add_runs(store, doomed, kept)
    for rec in (doomed, kept):
        with store.transaction() as tx:
            writes.insert_entries(tx, rec.id, [full_entry(0), full_entry(1)])
            writes.save_attempt(tx, rec.id, 0, Attempt(1, "completed"))
            writes.add_audit(tx, rec.id, AuditEvent("run_started"))
            tx.add_event(rec.id, "e", 1, T0)
            writes.insert_jobs(tx, [Job("activate", rec.id, run_at=T0)])
    kept_state = dump(store)[kept.id]
    with store.transaction() as tx:
        assert tx.delete_runs([doomed.id, doomed.id, str(uuid.uuid4())]) == 1
        assert tx.delete_runs([]) == 0
    after = dump(store)
    assert doomed.id not in after and after[kept.id] == kept_state
    assert [job.run_id for job in after["jobs"]] == [kept.id]
    with store.transaction() as tx:
        assert tx.load_entries(doomed.id) == [] and tx.load_attempts(doomed.id) == {}
        assert tx.load_audit(doomed.id) == [] and tx.load_events(doomed.id) == []
        writes.insert_run(tx, run_record(idempotency_key="again"))  # the key is free again


def test_find_prunable_picks_old_runs_of_the_given_statuses(store: Store) -> None:
    def at(seconds: int) -> datetime:
        return T0 + timedelta(seconds=seconds)

    cutoff = at(100)
    done_1 = run_record(status="completed", created_at=at(10), updated_at=at(20))
    done_2 = run_record(status="completed", created_at=at(0), updated_at=at(99))
    failed = run_record(status="failed", created_at=at(5), updated_at=at(6))
    cancelled = run_record(status="cancelled", created_at=at(1), updated_at=at(2))
    # Not prunable: updated at or after the cutoff (one created long before it), a status
    # not asked for, active runs.
    late = run_record(status="completed", created_at=at(0), updated_at=at(150))
    at_cutoff = run_record(status="completed", created_at=at(50), updated_at=cutoff)
    young = run_record(status="completed", created_at=at(120), updated_at=at(130))
    paused = run_record(status="paused", created_at=at(0), updated_at=at(1))
    running = run_record(status="running", created_at=at(0), updated_at=at(1))
    add_runs(store, done_1, done_2, failed, cancelled, late, at_cutoff, young, paused, running)

    with store.transaction() as tx:
        # Oldest created first within a status, statuses in the order given.
        assert tx.find_prunable(["completed", "failed"], cutoff, 10) == [
            done_2.id,
            done_1.id,
            failed.id,
        ]
        assert tx.find_prunable(["failed", "completed"], cutoff, 10) == [
            failed.id,
            done_2.id,
            done_1.id,
        ]
        assert tx.find_prunable(["completed", "failed", "cancelled"], cutoff, 2) == [
            done_2.id,
            done_1.id,
        ]
        assert tx.find_prunable(["completed", "cancelled"], cutoff, 3) == [
            done_2.id,
            done_1.id,
            cancelled.id,
        ]
        assert tx.find_prunable(["cancelled"], at(2), 10) == []  # strictly before
        assert tx.find_prunable(["completed"], cutoff, 0) == []
        assert tx.find_prunable([], cutoff, 10) == []
        # Naive cutoffs are UTC, like every stored time.
        assert tx.find_prunable(["failed"], cutoff.replace(tzinfo=None), 10) == [failed.id]
        # Finding changes nothing; the ids feed delete_runs.
        ids = tx.find_prunable(["completed", "failed", "cancelled"], cutoff, 10)
        assert tx.delete_runs(ids) == 4
    with store.transaction() as tx:
        assert tx.find_prunable(["completed", "failed", "cancelled"], cutoff, 10) == []
        assert {r.id for r in tx.list_runs()} == {
            late.id,
            at_cutoff.id,
            young.id,
            paused.id,
            running.id,
        }


# --------------------------------------------------------------------------- transactions


def test_an_exception_rolls_everything_back(store: Store) -> None:
    rec = run_record()
    add_runs(store, rec)
    with store.transaction() as tx:
        writes.insert_entries(tx, rec.id, [full_entry(0)])
        writes.save_attempt(tx, rec.id, 0, Attempt(1, "running"))
        event_id = tx.add_event(rec.id, "e", {"x": 1}, T0)
        (job,) = writes.insert_jobs(tx, [Job("activate", rec.id, run_at=T0)])
        tx.add_cron_tick("w", "c", T0, rec.id)
    keys = (("w", "c"), ("w", "d"))
    before = dump(store, keys)
    assert job.id is not None
    with pytest.raises(Boom), store.transaction() as tx:
        writes.insert_run(tx, full_run())
        locked = tx.lock_run(rec.id)
        assert locked is not None
        locked.status = "failed"
        writes.update_run(tx, locked)
        writes.insert_entries(tx, rec.id, [full_entry(1)])
        writes.update_entries(tx, rec.id, [full_entry(0, status="failed")])
        writes.save_attempt(tx, rec.id, 0, Attempt(1, "failed"))
        writes.save_attempt(tx, rec.id, 1, Attempt(1, "running"))
        writes.add_audit(tx, rec.id, AuditEvent("cancelled"))
        tx.add_event(rec.id, "f", None, T0)
        tx.delete_events(rec.id, [event_id])
        writes.insert_jobs(tx, [Job("step", rec.id, seq=1, attempt=1, run_at=T0)])
        tx.claim_jobs(now=T0, limit=5, worker="w", lease_until=T0 + timedelta(hours=1))
        tx.renew_lease([job.id], "w", T0 + timedelta(hours=2))
        writes.delete_job(tx, job.id)
        tx.add_cron_tick("w", "d", T0, "r")
        tx.delete_runs([rec.id])
        raise Boom("the caller's own error propagates unchanged")
    assert dump(store, keys) == before


def test_a_storage_error_inside_a_transaction_rolls_it_back(store: Store) -> None:
    rec = run_record()
    with pytest.raises(StorageError), store.transaction() as tx:
        writes.insert_run(tx, rec)
        writes.insert_run(tx, rec)
    with store.transaction() as tx:
        assert tx.get_run(rec.id) is None


def test_a_transaction_cannot_be_used_after_it_ended(store: Store) -> None:
    with store.transaction() as tx:
        pass
    with pytest.raises(StorageError):
        tx.get_run("x")


def test_in_memory_store_logs_calls_and_resets() -> None:
    store = InMemoryStore()
    rec = run_record()
    with store.transaction() as tx:
        writes.insert_run(tx, rec)
        tx.get_run(rec.id)
    assert store.calls == ["transaction", "insert_run", "get_run"]
    assert store.transaction().__enter__().connection is None
    store.reset()
    assert store.calls == []
    with store.transaction() as tx:
        assert tx.get_run(rec.id) is None


def test_open_store_picks_the_implementation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(open_store("memory://"), InMemoryStore)
    monkeypatch.chdir(tmp_path)
    default = open_store()
    assert isinstance(default, SqlStore) and default.dialect == "sqlite"
    assert default.engine.url.database == "squidmesh.db"
    default.close()
    pg = open_store("postgres://u@h/db")
    assert isinstance(pg, SqlStore) and pg.engine.url.drivername == "postgresql+psycopg"
    pg.close()
    host = sa.create_engine(f"sqlite:///{tmp_path}/host.db")
    shared = open_store(engine=host)
    shared.migrate()
    shared.close()  # must not dispose the host's engine
    with host.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM squidmesh_runs").scalar() == 0
    host.dispose()
    with pytest.raises(ValueError, match="schema"):
        open_store("postgresql://u@h/db", schema="Robert'); DROP TABLE x;--")


# --------------------------------------------------------------------------- locking


class _BlockingCalls:
    """Which threads have entered the call that takes a run's write lock, read from the
    store itself: PostgreSQL's ``pg_stat_activity`` (a backend waiting on a lock in the
    ``FOR NO KEY UPDATE`` of ``lock_run``), SQLite's statement trace (the connection
    began executing ``BEGIN IMMEDIATE``, where writers queue), the in-memory store's lock
    (a thread called ``acquire``). Evidence that the call was made, not a guess that some
    time was enough for it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.entered: list[tuple[int, str]] = []
        self._undo: list[Any] = []
        if isinstance(store, InMemoryStore):
            real_lock = store._lock
            entered = self.entered

            class ObservedLock:
                def __enter__(self) -> None:
                    entered.append((threading.get_ident(), "acquire"))
                    real_lock.acquire()

                def __exit__(self, *exc: object) -> None:
                    real_lock.release()

            store._lock = ObservedLock()  # type: ignore[assignment]
            self._undo.append(lambda: setattr(store, "_lock", real_lock))
        elif store.dialect == "sqlite":
            assert isinstance(store, SqlStore)
            traced: list[Any] = []

            def trace(dbapi: Any, record: object, proxy: object) -> None:
                dbapi.set_trace_callback(
                    lambda sql: self.entered.append((threading.get_ident(), sql))
                )
                traced.append(dbapi)

            engine = store._raw_engine
            # At checkout, before the store's "begin" listener issues BEGIN IMMEDIATE.
            sa.event.listen(engine, "checkout", trace)

            def undo() -> None:
                sa.event.remove(engine, "checkout", trace)
                for dbapi in traced:
                    dbapi.set_trace_callback(None)

            self._undo.append(undo)

    def close(self) -> None:
        for undo in self._undo:
            undo()

    def wait_until_entered(self, thread: threading.Thread) -> None:
        """Return once ``thread`` is inside the blocking call."""
        if self.store.dialect == "postgresql":
            self._wait_for_pg_lock_wait()
            return
        expected = "acquire" if isinstance(self.store, InMemoryStore) else "BEGIN IMMEDIATE"
        deadline = time.monotonic() + 10
        while (thread.ident, expected) not in self.entered:
            assert time.monotonic() < deadline, f"the second writer never ran {expected}"
            assert thread.is_alive(), "the second writer finished without blocking"
            time.sleep(0.005)

    def _wait_for_pg_lock_wait(self) -> None:
        assert isinstance(self.store, SqlStore)
        deadline = time.monotonic() + 10
        with self.store.engine.connect() as conn:
            while time.monotonic() < deadline:
                waiting = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND query LIKE '%FOR NO KEY UPDATE%'"
                    )
                ).scalar()
                conn.rollback()
                if waiting:
                    return
                time.sleep(0.01)
        raise AssertionError("the second lock_run never blocked")


def race_for_the_lock(
    store: Store,
    run: RunRecord,
    second: Callable[[], None],
    first_writes: Callable[[Transaction, RunRecord], None],
    waiting: Callable[[], bool],
) -> None:
    """``second`` (in a thread) asks for ``run``'s lock while a first change holds it.
    Once the store shows it has entered the call that takes the lock (above) and
    ``waiting()`` holds, the first change writes with ``first_writes`` and commits.
    Ordering is then proven through the data, not by timing. Fails with what ``second``
    raised."""
    holding = threading.Event()
    errors: list[BaseException] = []

    def run_second() -> None:
        try:
            assert holding.wait(10)
            second()
        except BaseException as exc:
            errors.append(exc)

    calls = _BlockingCalls(store)
    thread = threading.Thread(target=run_second)
    try:
        thread.start()
        with store.transaction() as tx:
            locked = tx.lock_run(run.id)
            assert locked is not None
            holding.set()
            calls.wait_until_entered(thread)
            assert waiting()  # still waiting for the lock the first change holds
            first_writes(tx, locked)
    finally:
        holding.set()
        thread.join(30)
        calls.close()
    assert not errors, errors


def test_lock_run_serializes_writers_of_a_run(store: Store, run: RunRecord) -> None:
    # The second writer must not get the run before the first commits, and must then
    # read the first one's change.
    returned: list[str] = []
    seen: list[str] = []

    def second() -> None:
        with store.transaction() as tx:
            locked = tx.lock_run(run.id)
            returned.append("lock_run")
            assert locked is not None
            seen.append(locked.status)
            locked.status = locked.status + "+second"
            writes.update_run(tx, locked)

    def first(tx: Transaction, locked: RunRecord) -> None:
        locked.status = "first"
        writes.update_run(tx, locked)

    race_for_the_lock(store, run, second, first, waiting=lambda: returned == [])
    assert returned == ["lock_run"]
    assert seen == ["first"]  # the second writer read the first one's committed change
    with store.transaction() as tx:
        final = tx.get_run(run.id)
    assert final is not None and final.status == "first+second"


def test_a_run_locked_with_its_history(store: Store, run: RunRecord) -> None:
    fresh = run_record()
    add_runs(store, fresh)
    with store.transaction() as tx:
        writes.insert_entries(tx, run.id, [full_entry(0), full_entry(1)])
    with store.transaction() as tx:
        assert tx.lock_run_with_history(run.id, None) == (run, [full_entry(0), full_entry(1)])
        # the caller holds the history of this version: only the run
        assert tx.lock_run_with_history(run.id, run.version) == (run, None)
        assert tx.lock_run_with_history(run.id, run.version - 1) == (
            run,
            [full_entry(0), full_entry(1)],
        )
        assert tx.lock_run_with_history(fresh.id, None) == (fresh, [])
        assert tx.lock_run_with_history(str(uuid.uuid4()), None) is None


def test_a_run_locked_with_its_history_sees_what_the_writer_it_waited_for_wrote(
    store: Store, run: RunRecord
) -> None:
    # The second change asks for the lock while the first holds it, knowing the run's
    # old version. Once the first commits (a new version, a new entry), the second must
    # get both: a history read with the snapshot of before the wait would lack the
    # entry (and judge the old version current).
    got: list[Any] = []

    def second() -> None:
        with store.transaction() as tx:
            got.append(tx.lock_run_with_history(run.id, run.version))

    def first(tx: Transaction, locked: RunRecord) -> None:
        locked.status = "first"
        writes.update_run(tx, locked)
        writes.insert_entries(tx, run.id, [full_entry(0)])

    race_for_the_lock(store, run, second, first, waiting=lambda: got == [])
    ((after, history),) = got
    assert (after.status, after.version) == ("first", run.version + 1)
    assert history == [full_entry(0)]


# --------------------------------------------------------------------------- databases only


@pytest.fixture(params=SQL_KINDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The SQLAlchemy URL of an empty database (never migrated)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/empty.db"
    return postgres.sqlalchemy_url(request.getfixturevalue("pg_database_url"))


def _versions(store: SqlStore) -> list[int]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(t.schema_version.c.version)).scalars())


def test_check_schema_and_migrate(empty_url: str) -> None:
    store = SqlStore(create_engine(empty_url), owns_engine=True)
    try:
        with pytest.raises(
            SchemaOutOfDateError, match=rf"version 0.*expects version {SCHEMA_VERSION}.*migrate"
        ):
            store.check_schema()
        store.migrate()
        store.migrate()  # idempotent
        store.check_schema()
        assert _versions(store) == list(range(1, SCHEMA_VERSION + 1))
        with store.engine.begin() as conn:
            conn.execute(sa.delete(t.schema_version))
        with pytest.raises(SchemaOutOfDateError, match="version 0"):
            store.check_schema()
    finally:
        store.close()


def _reflect(engine: sa.Engine, schema: str | None) -> dict[str, Any]:
    inspector = sa.inspect(engine)
    found: dict[str, Any] = {}
    for name in inspector.get_table_names(schema=schema):
        found[name] = {
            "columns": [
                (c["name"], repr(c["type"]), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(name, schema=schema)
            ],
            "primary_key": inspector.get_pk_constraint(name, schema=schema)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(name, schema=schema)
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(name, schema=schema)
            ),
            "foreign_keys": sorted(
                (
                    tuple(f["constrained_columns"]),
                    f["referred_table"],
                    tuple(f["referred_columns"]),
                    f.get("options", {}).get("ondelete"),
                )
                for f in inspector.get_foreign_keys(name, schema=schema)
            ),
        }
    return found


def _autoincrement_tables(engine: sa.Engine) -> set[str]:
    # SQLAlchemy does not reflect AUTOINCREMENT, which keeps SQLite from reusing ids.
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%AUTOINCREMENT%'"
        )
        return {row[0] for row in rows}


def test_migrations_create_exactly_tables_py(
    empty_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    sqlite_db = empty_url.startswith("sqlite")
    if sqlite_db:
        declared_url, drop = f"sqlite:///{tmp_path}/declared.db", None
    else:
        raw = postgres.create_database(request.getfixturevalue("pg_server_url"), "declared")
        declared_url, drop = postgres.sqlalchemy_url(raw), raw
    migrated = SqlStore(create_engine(empty_url), owns_engine=True)
    declared = create_engine(declared_url)
    schema = None if sqlite_db else "squidmesh"
    try:
        migrated.migrate()
        with declared.begin() as conn:
            if schema:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
            mapped = conn.execution_options(
                schema_translate_map=t.translate_map(declared.dialect.name, "squidmesh")
            )
            t.metadata.create_all(mapped)
        from_migrations = _reflect(migrated.engine, schema)
        from_tables = _reflect(declared, schema)
        assert set(from_migrations) == {table.name for table in t.metadata.tables.values()}
        assert from_migrations == from_tables
        if sqlite_db:
            expected = {
                "squidmesh_audit_events",
                "squidmesh_events",
                "squidmesh_jobs",
                "squidmesh_cron_ticks",
            }
            assert _autoincrement_tables(migrated.engine) == expected
            assert _autoincrement_tables(declared) == expected
    finally:
        migrated.close()
        declared.dispose()
        if drop is not None:
            postgres.drop_database(drop)


def test_driver_errors_become_storage_errors_with_the_dbapi_cause(sql_store: SqlStore) -> None:
    rec = run_record()
    add_runs(sql_store, rec)
    with pytest.raises(StorageError, match=f"could not create run {rec.id}") as caught:
        with sql_store.transaction() as tx:
            writes.insert_run(tx, rec)
    cause = caught.value.__cause__
    if sql_store.dialect == "postgresql":
        assert isinstance(cause, psycopg.errors.UniqueViolation)
    else:
        import sqlite3

        assert isinstance(cause, sqlite3.IntegrityError)


def test_host_writes_share_the_transaction(sql_store: SqlStore) -> None:
    with sql_store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE host_orders (id INTEGER PRIMARY KEY)")
    rec = run_record()
    with pytest.raises(Boom), sql_store.transaction() as tx:
        writes.insert_run(tx, rec)
        tx.connection.exec_driver_sql("INSERT INTO host_orders (id) VALUES (1)")
        raise Boom
    # the caller's own SQLAlchemy errors are not translated
    with pytest.raises(sa.exc.DBAPIError), sql_store.transaction() as tx:
        tx.connection.exec_driver_sql("SELECT * FROM no_such_table")
    with sql_store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM host_orders").scalar() == 0
    with sql_store.transaction() as tx:
        assert tx.get_run(rec.id) is None


_MIGRATE_SCRIPT = textwrap.dedent(
    """
    import pathlib, sys, time
    from squidmesh.storage.sql import SqlStore, create_engine

    url, go, ready = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    store = SqlStore(create_engine(url), owns_engine=True)
    with store.engine.connect():
        pass  # connected up front, so every process starts migrating at once
    ready.touch()
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit("never told to go")
        time.sleep(0.001)
    store.migrate()
    store.check_schema()
    store.close()
    """
)


@pytest.mark.postgres
def test_concurrent_migrations_from_separate_processes(
    pg_database_url: str, tmp_path: Path
) -> None:
    url = postgres.sqlalchemy_url(pg_database_url)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_SCRIPT, url, str(go), str(flag)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for flag in ready
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(flag.exists() for flag in ready):
            assert time.monotonic() < deadline, "the migrating processes did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    store = SqlStore(pg_engine(pg_database_url), owns_engine=True)
    try:
        assert _versions(store) == list(range(1, SCHEMA_VERSION + 1))
        store.check_schema()
    finally:
        store.close()


@pytest.mark.postgres
def test_a_custom_schema_holds_everything(pg_database_url: str) -> None:
    engine = pg_engine(pg_database_url)
    store = SqlStore(engine, schema="sm_custom")
    listener = psycopg.connect(pg_database_url, autocommit=True)
    try:
        store.migrate()
        store.check_schema()
        with pytest.raises(SchemaOutOfDateError, match="'squidmesh'"):
            SqlStore(engine).check_schema()
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names(schema="sm_custom")) == {
            table.name for table in t.metadata.tables.values()
        }
        assert "squidmesh" not in inspector.get_schema_names()
        assert store.notify_channel == "sm_custom_jobs"
        listener.execute('LISTEN "sm_custom_jobs"')
        rec = run_record()
        with store.transaction() as tx:
            writes.insert_run(tx, rec)
            writes.insert_entries(tx, rec.id, [full_entry(0)])
            writes.insert_jobs(tx, [Job("activate", rec.id)])
            # NOTIFY is delivered at commit, not before
            assert list(listener.notifies(timeout=0.2, stop_after=1)) == []
        assert [n.channel for n in listener.notifies(timeout=10, stop_after=1)] == [
            "sm_custom_jobs"
        ]
        with store.transaction() as tx:
            assert tx.get_run(rec.id) == rec
            assert tx.load_entries(rec.id) == [full_entry(0)]
    finally:
        listener.close()
        store.close()
        engine.dispose()


def test_schema_names_are_plain_identifiers() -> None:
    for bad in ("", "Upper", "1abc", "a-b", 'x"; drop', "a" * 59):
        with pytest.raises(ValueError):
            t.check_schema_name(bad)
    assert t.check_schema_name("sm_custom") == "sm_custom"


@pytest.mark.postgres
def test_schema_names_that_postgresql_reserves_are_refused_before_migrate(
    pg_server_url: str,
) -> None:
    # Every word PostgreSQL's own catalogue says cannot name a schema unquoted.
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        reserved = [
            row[0]
            for row in conn.execute(
                "SELECT word FROM pg_get_keywords() WHERE catcode IN ('R', 'T')"
            )
        ]
    assert len(reserved) > 50
    for word in reserved:
        with pytest.raises(sm.InvalidArgumentError, match="reserved word"):
            t.check_schema_name(word)
        with pytest.raises(sm.InvalidArgumentError, match="reserved word"):
            SqlStore(sa.create_engine("sqlite://"), schema=word)
