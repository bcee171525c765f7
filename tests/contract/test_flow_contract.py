"""The queue-aware claim (flow control) on every store: memory, SQLite, PostgreSQL.

Jobs of a queue carry ``{"queue", "flow_key", "priority"}`` in their data; a claim given
the queues' limits takes them only within those limits, counted across claimers
(``squidmesh/storage/flow_claim.py``).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

import squidmesh as sm
from squidmesh.core.records import Job
from squidmesh.storage import liveness
from squidmesh.storage.base import Store
from squidmesh.storage.sql import SqlStore
from tests.contract.conftest import pg_engine
from tests.support import writes

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
LEASE = T0 + timedelta(seconds=30)


def queued(run: str, queue: str, key: str | None = None, priority: int = 0, **kw: Any) -> Job:
    data = {"queue": queue, "flow_key": key, "priority": priority}
    return Job("step", run, 0, 1, run_at=kw.get("run_at", T0 - timedelta(seconds=1)), data=data)


def claim(
    store: Store,
    queues: dict[str, sm.Queue] | None,
    *,
    limit: int = 100,
    now: datetime = T0,
    worker: str = "w1",
) -> list[Job]:
    with store.transaction() as tx:
        return tx.claim_jobs(
            now=now,
            limit=limit,
            worker=worker,
            lease_until=now + timedelta(seconds=30),
            queues=queues,
        )


def insert(store: Store, *jobs: Job) -> list[Job]:
    with store.transaction() as tx:
        return writes.insert_jobs(tx, list(jobs))


def finish(store: Store, *jobs: Job) -> None:
    with store.transaction() as tx:
        for job in jobs:
            writes.delete_job(tx, int(job.id or 0))


def test_queued_jobs_wait_for_a_claim_that_knows_their_queue(store: Store) -> None:
    plain, _ = insert(store, Job("activate", "p", run_at=T0), queued("r1", "q_unknown_here"))
    # The plain claim (no queues) never takes a queued job; the default path is unchanged.
    assert claim(store, None) == [plain]
    # A queue this claimer does not know is left to one that does.
    assert claim(store, {"other": sm.Queue("other", concurrency=1)}) == []
    with store.transaction() as tx:
        assert tx.next_job_time() is not None  # the plain job is leased: its lease end
    q = sm.Queue("q_unknown_here", concurrency=1)
    assert [j.run_id for j in claim(store, {q.name: q})] == ["r1"]


def test_concurrency_counts_leased_jobs_of_every_claimer(store: Store) -> None:
    q = sm.Queue("c3", concurrency=3)
    jobs = insert(store, *(queued(f"r{i}", "c3") for i in range(10)))
    plain = insert(store, Job("activate", "p", run_at=T0))
    first = claim(store, {q.name: q}, worker="w1")
    assert [j.id for j in first[:3]] == [j.id for j in jobs[:3]]  # oldest first
    assert first[3:] == plain  # unqueued work is claimed alongside
    assert claim(store, {q.name: q}, worker="w2") == []  # three slots are taken
    finish(store, first[0])
    assert [j.id for j in claim(store, {q.name: q}, worker="w2")] == [jobs[3].id]
    # A dead worker's slots come back when its leases expire (w1 is not alive here).
    later = T0 + timedelta(seconds=31)
    again = claim(store, {q.name: q}, worker="w3", now=later)
    # w2's lease (taken at T0, until T0+30) expired too: three slots free at T0+31
    # (and the plain job, whose lease expired as well, is taken again).
    assert len([j for j in again if j.data]) == 3
    assert [j.id for j in again if not j.data] == [plain[0].id]


@contextlib.contextmanager
def alive(store: Store, owner: str) -> Iterator[None]:
    """``owner`` lives while this is open, as each store tells: registered in this
    process (memory, SQLite) and holding its advisory lock on a session (PostgreSQL)."""
    session = None
    key = liveness.ADVISORY_PREFIX + owner
    if isinstance(store, SqlStore) and store.dialect == "postgresql":
        url = store.engine.url.set(drivername="postgresql")
        session = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        session.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
    liveness.held(owner)
    try:
        yield
    finally:
        liveness.release(owner)
        if session is not None:
            # Unlocked before the session closes: a closing backend lets go of its locks
            # a moment after the client hangs up, and the next claim must see it gone.
            session.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
            session.close()


def test_an_expired_lease_of_a_queue_is_taken_over_only_from_an_owner_that_is_gone(
    store: Store,
) -> None:
    q = sm.Queue("takeover", concurrency=5)
    host = socket.gethostname()
    lives, dies = (f"{host}:{os.getpid()}:{name}" for name in ("lives", "dies"))
    [kept] = insert(store, queued("kept", "takeover"))
    with alive(store, lives):
        assert claim(store, {q.name: q}, worker=lives) == [kept]
        [lost] = insert(store, queued("lost", "takeover"))
        with alive(store, dies):
            assert claim(store, {q.name: q}, worker=dies) == [lost]
        # Both leases have expired (T0+30); only the owner that is gone loses its job.
        later = T0 + timedelta(seconds=60)
        assert claim(store, {q.name: q}, worker="w2", now=later) == [lost]
        # A lease left unrenewed past the stale bound is taken even from a live owner
        # (and w2's, whose owner is not alive here).
        stale = LEASE + timedelta(seconds=liveness.STALE_LEASE_SECONDS + 1)
        assert claim(store, {q.name: q}, worker="w3", now=stale) == [kept, lost]


def test_key_concurrency_and_fair_rotation_across_keys(store: Store) -> None:
    q = sm.Queue("k", concurrency=4, key_concurrency=2)
    insert(store, *(queued(f"big{i}", "k", "big") for i in range(50)))
    insert(store, *(queued(f"small{i}", "k", "small") for i in range(2)))
    got = claim(store, {q.name: q})
    keys = sorted((j.data or {})["flow_key"] for j in got)
    assert keys == ["big", "big", "small", "small"]
    assert claim(store, {q.name: q}) == []


def test_a_flooding_key_never_starves_another_at_concurrency_one(store: Store) -> None:
    q = sm.Queue("one", concurrency=1)
    insert(store, *(queued(f"a{i}", "one", "a") for i in range(20)))
    insert(store, queued("b0", "one", "b", run_at=T0), queued("b1", "one", "b", run_at=T0))
    order = []
    for step in range(6):
        now = T0 + timedelta(seconds=step + 1)
        (job,) = claim(store, {q.name: q}, now=now)
        order.append((job.data or {})["flow_key"])
        finish(store, job)
    assert order == ["a", "b", "a", "b", "a", "a"]


def test_priority_orders_waiting_work_within_a_queue(store: Store) -> None:
    q = sm.Queue("prio", concurrency=2)
    insert(
        store,
        queued("low", "prio", priority=0),
        queued("high", "prio", priority=10),
        queued("mid", "prio", priority=5),
    )
    assert [j.run_id for j in claim(store, {q.name: q})] == ["high", "mid"]


def test_rate_counts_starts_in_a_window_shared_by_claimers(store: Store) -> None:
    q = sm.Queue("rated", rate=sm.Rate(3, per=10))
    insert(store, *(queued(f"r{i}", "rated") for i in range(10)))
    first = claim(store, {q.name: q}, worker="w1")
    assert len(first) == 3
    finish(store, *first)  # finished work still counts: the limit is on starts
    assert claim(store, {q.name: q}, worker="w2", now=T0 + timedelta(seconds=9)) == []
    assert len(claim(store, {q.name: q}, worker="w2", now=T0 + timedelta(seconds=10))) == 3


def test_rate_reopens_when_the_oldest_start_leaves_a_full_window(store: Store) -> None:
    q = sm.Queue("reopens", rate=sm.Rate(2, per=10))
    other = sm.Queue("reopens-idle", rate=sm.Rate(1, per=5))
    queues = {q.name: q, other.name: other}
    insert(store, *(queued(f"r{i}", q.name) for i in range(3)))
    with store.transaction() as tx:
        assert tx.rate_reopens(queues, T0) is None  # nothing started: nothing held back
    assert len(claim(store, {q.name: q}, limit=1)) == 1
    with store.transaction() as tx:
        # Room for one; had a claim found it full, by a clock a moment behind, the start
        # at T0 leaving the window is when to look again.
        assert tx.rate_reopens(queues, T0 + timedelta(seconds=1)) == T0 + timedelta(seconds=10)
    assert len(claim(store, {q.name: q}, limit=1, now=T0 + timedelta(seconds=4))) == 1
    with store.transaction() as tx:
        # Full; the start at T0 leaves the window at T0+10, and the claim takes one then.
        assert tx.rate_reopens(queues, T0 + timedelta(seconds=5)) == T0 + timedelta(seconds=10)
    assert claim(store, {q.name: q}, now=T0 + timedelta(seconds=9)) == []
    assert len(claim(store, {q.name: q}, now=T0 + timedelta(seconds=10))) == 1
    with store.transaction() as tx:
        # The last waiting job was taken: a full window holds nothing back any more.
        assert tx.rate_reopens(queues, T0 + timedelta(seconds=11)) is None


def test_limits_are_validated() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(sm.DefinitionError, match="concurrency must be a positive integer"):
            sm.Queue("bad", concurrency=bad)  # type: ignore[arg-type]
        with pytest.raises(sm.DefinitionError, match="key_concurrency"):
            sm.Queue("bad", key_concurrency=bad)  # type: ignore[arg-type]
    with pytest.raises(sm.DefinitionError, match="per must be > 0"):
        sm.Rate(10, per=0)
    with pytest.raises(sm.DefinitionError, match="limit must be a positive integer"):
        sm.Rate(0, per=1)
    with pytest.raises(sm.DefinitionError, match=r"rate must be sm\.Rate"):
        sm.Queue("bad", rate=10)  # type: ignore[arg-type]
    with pytest.raises(sm.DefinitionError, match="name"):
        sm.Queue("")
    with pytest.raises(sm.SquidmeshError, match="needs a key"):
        sm.Debounce("", 5)
    with pytest.raises(sm.SquidmeshError, match="seconds must be > 0"):
        sm.Debounce("k", 0)


def test_others_waiting_sees_other_keys_and_higher_priorities(store: Store) -> None:
    insert(store, queued("a1", "ow", "a"), queued("a2", "ow", "a", priority=3))
    with store.transaction() as tx:
        assert not tx.others_waiting("ow", "a", 3, T0)
        assert tx.others_waiting("ow", "a", 2, T0)  # a higher priority waits
        assert tx.others_waiting("ow", "b", 5, T0)  # another key waits
        assert tx.others_waiting("ow", None, 5, T0)
        assert not tx.others_waiting("elsewhere", "a", 0, T0)
    insert(store, queued("n1", "none", None))
    with store.transaction() as tx:
        assert not tx.others_waiting("none", None, 0, T0)
        assert tx.others_waiting("none", "k", 0, T0)
    claim(store, {"none": sm.Queue("none")})
    with store.transaction() as tx:
        assert not tx.others_waiting("none", "k", 0, T0)  # leased: not waiting


def _round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the client waits for the server on from now on: each statement sent on
    its own (its first words), each pipeline (however many statements it carries), and
    ``commit()`` for each commit of an open transaction."""
    trips: list[str] = []
    inside = [0]
    execute, commit = psycopg.Cursor.execute, psycopg.Connection.commit
    pipeline = psycopg.Connection.pipeline

    def traced_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if not inside[0]:
            trips.append(" ".join(str(query).split()[:2]))
        return execute(self, query, *args, **kwargs)

    @contextlib.contextmanager
    def traced_pipeline(self: Any) -> Iterator[Any]:
        trips.append("pipeline")
        inside[0] += 1
        try:
            with pipeline(self) as p:
                yield p
        finally:
            inside[0] -= 1

    def traced_commit(self: Any) -> None:
        if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            trips.append("commit()")
        commit(self)

    monkeypatch.setattr(psycopg.Cursor, "execute", traced_execute)
    monkeypatch.setattr(psycopg.Connection, "pipeline", traced_pipeline)
    monkeypatch.setattr(psycopg.Connection, "commit", traced_commit)
    return trips


@pytest.mark.postgres
def test_the_queue_aware_claim_is_three_round_trips_and_its_commit_on_postgresql(
    pg_migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A queued run's first step waits for this claim, and in a busy worker every round
    # trip is also a wait for the interpreter lock: the first look alone, then the
    # counts under the lock, then the leases with the plain claim, each pipelined.
    store = SqlStore(pg_engine(pg_migrated_url), owns_engine=True)
    try:
        _three_round_trips(store, monkeypatch)
    finally:
        store.close()


def _three_round_trips(sql_store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    q = sm.Queue("rt", concurrency=2, rate=sm.Rate(10, per=60))
    jobs = insert(sql_store, *(queued(f"r{i}", "rt", key=f"k{i}") for i in range(3)))
    plain = insert(sql_store, Job("activate", "p", run_at=T0))
    trips = _round_trips(monkeypatch)
    got = claim(sql_store, {q.name: q})
    assert [j.id for j in got] == [jobs[0].id, jobs[1].id, plain[0].id]
    assert trips == ["SELECT squidmesh.squidmesh_jobs.queue,", "pipeline", "pipeline", "commit()"]
    # With every slot of the queue taken, the first look ends the queued part.
    trips.clear()
    assert claim(sql_store, {q.name: q}) == []
    assert trips == [
        "SELECT squidmesh.squidmesh_jobs.queue,",
        "UPDATE squidmesh.squidmesh_jobs",
        "commit()",
    ]
