"""The queue-aware claim on PostgreSQL in three round trips.

The claim (``squidmesh/storage/flow_claim.py``) counts what the limits depend on and
leases what it chose under one transaction advisory lock, so what it counted stays true
until it commits. Sent statement by statement that was eight round trips or more, each
one a wait of the worker's claiming thread; in a busy process every wait is also a new
turn at the interpreter lock, so a queued run's first step waited for the claim far
longer than the database worked on it (``benchmarks/README.md``, B7). Through psycopg's
pipeline the claim is:

1. the first look: per queue and key, the jobs leased and the jobs claimable. With
   nothing to take, or every queue full, the claim ends here without queueing for the
   lock (a full queue is the common case under load), and claims plain jobs only;
2. the lock, the jobs running, the rate windows, and the heads waiting with their keys'
   last turns and whether an expired lease may be taken over, together. Each is its own
   statement, so each takes its snapshot after the lock is granted;
3. the leases, the rate starts, the keys' turns and the plain claim of the slots left,
   together. The COMMIT follows with the transaction.

The statements are ``sql_queries.Queries``' (SQLite runs the same ones through
SQLAlchemy), compiled once for psycopg in the store's schema. Each goes through a cursor
of its own, not ``Connection.execute``: a connection a host lends (Django's) gives its
cursors psycopg's own loaders, where the connection's read times in the host's zone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from squidmesh.core.flow import Queue
from squidmesh.core.records import Job
from squidmesh.errors import StorageError
from squidmesh.storage import flow_claim, liveness
from squidmesh.storage import tables as t
from squidmesh.storage.sql_queries import (
    Queries,
    claimed_jobs,
    flow_forgets,
    flow_grants,
    flow_heads,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["PgFlowClaim"]


class _Sql:
    """A statement compiled for psycopg: its text and the values SQLAlchemy bound at
    build time (literals such as a function's constant argument)."""

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect, schema: str) -> None:
        compiled = statement.compile(
            dialect=dialect,
            schema_translate_map=t.translate_map("postgresql", schema),
            render_schema_translate=True,
            # an INSERT without the RETURNING of its key (nobody reads it)
            for_executemany=True,
        )
        self.text = compiled.string
        self._fixed = {k: v for k, v in compiled.params.items() if v is not None}

    def params(self, **given: Any) -> dict[str, Any]:
        return {**self._fixed, **given}


class PgFlowClaim:
    """``Transaction.claim_jobs`` with queues, on PostgreSQL."""

    def __init__(self, queries: Queries, dialect: sa.Dialect, schema: str) -> None:
        def sql(statement: sa.ClauseElement) -> _Sql:
            return _Sql(statement, dialect, schema)

        self._lock_key = f"squidmesh-flow:{schema}"
        self._counts = sql(queries.flow_counts)
        self._lock = sql(queries.flow_lock)
        self._running = sql(queries.flow_running)
        self._forget_starts = sql(queries.flow_forget_starts)
        self._starts = sql(queries.flow_starts)
        self._waiting = sql(queries.flow_waiting)
        self._forget_keys = sql(queries.flow_forget_keys)
        self._lease = sql(queries.flow_lease)
        self._add_starts = sql(queries.flow_add_starts)
        self._serve = sql(queries.flow_serve)
        # an UPDATE here (typed for both dialects: SQLite's is a SELECT)
        self._plain = sql(cast(sa.Update, queries.claim_jobs))

    def claim(
        self,
        driver: psycopg.Connection[Any],
        *,
        now: datetime,
        limit: int,
        worker: str,
        lease_until: datetime,
        queues: Mapping[str, Queue],
        failed: Callable[[psycopg.Connection[Any], str, Exception], StorageError],
    ) -> list[Job]:
        """Claim up to ``limit`` jobs on ``driver``'s open transaction: queued ones
        first, within their queues' limits, then plain ones. ``failed`` makes a
        driver's error the store's."""
        import psycopg  # loaded already: the engine's driver

        try:
            return self._claim(driver, t.utc(now), limit, worker, lease_until, queues)
        except (psycopg.Error, TypeError, ValueError) as exc:
            raise failed(driver, "claim jobs", exc) from exc

    def _claim(
        self,
        driver: psycopg.Connection[Any],
        now: datetime,
        limit: int,
        worker: str,
        lease_until: datetime,
        queues: Mapping[str, Queue],
    ) -> list[Job]:
        names = sorted(queues)
        plain = self._plain.params(now=now, n=limit, w=worker, until=lease_until)
        # 1: the first look, without the lock
        leased: dict[tuple[str, str | None], int] = {}
        ready = 0
        for name, key, held, claimable in driver.cursor().execute(
            self._counts.text, self._counts.params(names=names, now=now)
        ):
            leased[(name, key)] = int(held or 0)
            ready += int(claimable or 0)
        if not ready or flow_claim.all_full(queues, leased):
            return claimed_jobs(driver.cursor().execute(self._plain.text, plain))
        # 2: under the lock, what the limits depend on and the heads waiting
        rated = [name for name in names if queues[name].rate is not None]
        stale = now - timedelta(seconds=liveness.STALE_LEASE_SECONDS)
        with driver.pipeline():
            driver.cursor().execute(self._lock.text, self._lock.params(key=self._lock_key))
            running_rows = driver.cursor().execute(
                self._running.text, self._running.params(names=names, now=now)
            )
            for forget in flow_forgets(queues, rated, now):
                driver.cursor().execute(
                    self._forget_starts.text, self._forget_starts.params(**forget)
                )
            start_rows = (
                driver.cursor().execute(self._starts.text, self._starts.params(names=rated))
                if rated
                else None
            )
            waiting_rows = driver.cursor().execute(
                self._waiting.text,
                self._waiting.params(names=names, now=now, n=limit, stale=stale),
            )
        running = {(row[0], row[1]): int(row[2]) for row in running_rows}
        starts = {row[0]: int(row[1]) for row in start_rows} if start_rows is not None else {}
        # The database said which expired leases may be taken over (``takeable``).
        heads = flow_heads(waiting_rows, stale=stale, owner_lives=_asked_of_database)
        chosen = heads.choose(running=running, starts=starts, queues=queues, limit=limit)
        # 3: the leases, what they record, and plain jobs for the slots left
        ids = [item.id for item in chosen]
        left = limit - len(ids)
        with driver.pipeline():
            if ids:
                if random.random() < flow_claim.PRUNE_CHANCE:
                    before = now - flow_claim.PRUNE_SERVED_AFTER
                    driver.cursor().execute(
                        self._forget_keys.text, self._forget_keys.params(before=before)
                    )
                driver.cursor().execute(
                    self._lease.text,
                    self._lease.params(ids=ids, w=worker, until=lease_until, now=now),
                )
                begun, turns = flow_grants(chosen, queues, now)
                with driver.cursor() as cursor:
                    if begun:
                        cursor.executemany(
                            self._add_starts.text, [self._add_starts.params(**b) for b in begun]
                        )
                    cursor.executemany(
                        self._serve.text, [self._serve.params(**turn) for turn in turns]
                    )
            plain_rows = (
                driver.cursor().execute(self._plain.text, {**plain, "n": left})
                if left > 0
                else None
            )
        taken = [heads.jobs[i] for i in ids]
        return taken + (claimed_jobs(plain_rows) if plain_rows is not None else [])


def _asked_of_database(owner: str) -> bool:
    raise AssertionError(f"the claim's query decides whether owner {owner} lives")
