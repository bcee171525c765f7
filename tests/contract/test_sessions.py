"""``Store.leadership`` and ``Store.wakeups``: what a store offers outside transactions."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from squidmesh.core.records import Job
from squidmesh.storage.base import Store
from tests.support import writes


def test_one_leader_at_a_time_and_the_next_once_it_lets_go(store: Store) -> None:
    first, second = store.leadership("cron"), store.leadership("cron")
    try:
        assert first.acquire() and first.alive()
        if store.dialect == "postgresql":
            assert not second.acquire()
            other = store.leadership("another")  # another name is another lock
            assert other.acquire()
            other.release()
            first.release()
            assert not first.alive()
            assert second.acquire() and second.alive()
        else:
            # One process per store here; duplicates are refused by unique keys anyway.
            assert second.acquire()
    finally:
        first.release()
        second.release()


def test_a_released_hold_stays_released_when_a_renewal_comes_late(store: Store) -> None:
    # The presence thread renews a hold while the Mesh closes: the renewal may run
    # after the release. It must not take the owner back (its leases would look alive
    # to every claimer, and on PostgreSQL its session would be left open).
    owner = f"{socket.gethostname()}:{os.getpid()}:late-renewal"
    holding = store.hold(owner)
    with store.transaction() as tx:
        assert tx.owner_alive(owner)
    holding.release()
    holding.renew()
    with store.transaction() as tx:
        assert not tx.owner_alive(owner)
    holding.release()  # twice is harmless


def test_a_committed_job_wakes_a_listener(store: Store) -> None:
    wakeups = store.wakeups()
    if store.dialect != "postgresql":
        assert wakeups is None  # workers of these stores are woken in-process, or poll
        return
    assert wakeups is not None
    woken = threading.Semaphore(0)
    stopping = threading.Event()
    listener = threading.Thread(
        target=wakeups.listen, args=(woken.release, stopping), kwargs={"name": "test"}
    )
    listener.start()
    try:
        # The first wake-up comes with the connection (jobs may have been committed
        # while no one listened); the next only from a commit.
        assert woken.acquire(timeout=30)
        with store.transaction() as tx:
            writes.insert_jobs(tx, [Job("activate", None)])
        assert woken.acquire(timeout=30)
    finally:
        stopping.set()
        listener.join(30)
    assert not listener.is_alive()


@pytest.mark.postgres
def test_leadership_is_per_schema(pg_migrated_url: str) -> None:
    from squidmesh.storage.sql import SqlStore
    from tests.contract.conftest import pg_engine

    stores = [
        SqlStore(pg_engine(pg_migrated_url), schema=schema, owns_engine=True)
        for schema in ("squidmesh", "tenant_b")
    ]
    try:
        leaders = [s.leadership("cron") for s in stores]
        assert all(leader.acquire() for leader in leaders)
        for leader in leaders:
            leader.release()
    finally:
        for s in stores:
            s.close()


@pytest.mark.postgres
@pytest.mark.parametrize("statement", ["pg_try_advisory_lock", "pg_advisory_lock"])
def test_a_session_that_fails_to_take_its_lock_is_closed_at_once(
    pg_migrated_url: str, monkeypatch: pytest.MonkeyPatch, statement: str
) -> None:
    # Left to the garbage collector, the connection would be closed by some later
    # collection, in whatever test runs then, with a ResourceWarning (seen in CI).
    import gc
    import warnings

    import psycopg

    from squidmesh.errors import StorageError
    from squidmesh.storage.sql import SqlStore
    from tests.contract.conftest import pg_engine

    opened: list[psycopg.Connection] = []
    real_connect = psycopg.connect
    real_execute = psycopg.Connection.execute

    def connect(*args: object, **kwargs: object) -> object:
        conn = real_connect(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(conn)
        return conn

    def execute(self: psycopg.Connection, query: object, *args: object, **kw: object) -> object:
        if f"{statement}(" in str(query):
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real_execute(self, query, *args, **kw)  # type: ignore[call-overload]

    store = SqlStore(pg_engine(pg_migrated_url), schema="squidmesh", owns_engine=True)
    try:
        monkeypatch.setattr(psycopg, "connect", connect)
        monkeypatch.setattr(psycopg.Connection, "execute", execute)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises((psycopg.Error, StorageError)):
                if statement == "pg_try_advisory_lock":
                    store.leadership("cron").acquire()
                else:
                    store.hold("owner-that-cannot-hold").release()
            gc.collect()
        monkeypatch.undo()
        assert opened and all(conn.closed for conn in opened)
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    finally:
        store.close()


def test_a_busy_process_keeps_its_postgresql_connections(pg_migrated_url: str) -> None:
    # A worker's 16 job threads, its claim loop, heartbeat and sweeper may all be in a
    # transaction at once: none waits for the pool, and the connections opened at that
    # peak stay open for the next one instead of being closed and opened again (each a
    # backend PostgreSQL forks).
    import contextlib

    import sqlalchemy as sa

    from squidmesh.storage import open_store

    store = open_store(pg_migrated_url)
    opened: list[object] = []
    engine = store.engine.engine  # type: ignore[attr-defined]
    sa.event.listen(engine.pool, "connect", lambda dbapi, record: opened.append(dbapi))
    try:
        for _ in range(3):
            with contextlib.ExitStack() as peak:
                for _ in range(20):
                    peak.enter_context(store.transaction())
        assert len(opened) == 20
    finally:
        store.close()
