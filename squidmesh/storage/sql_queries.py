"""Prebuilt SQLAlchemy Core statements and row conversions for ``SqlStore``.

Everything here is built once per dialect, so the hot path only binds parameters and hits
SQLAlchemy's compiled cache. Statements are written against the placeholder schema of
``tables``; the engine's ``schema_translate_map`` places them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from squidmesh.core.flow import Queue
from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.storage import liveness
from squidmesh.storage import tables as t
from squidmesh.storage.base import ENTRY_COLUMNS, HOLDING, PARKED, RUN_FIELDS, RunRecord
from squidmesh.storage.flow_claim import NO_KEY, Waiting, plan
from squidmesh.types import TERMINAL_STATUSES, RunStatus

__all__ = [
    "FlowHeads",
    "Queries",
    "claimed_jobs",
    "flow_forgets",
    "flow_grants",
    "flow_heads",
    "queries_for",
]

_ATTEMPT_FIELDS = tuple(f.name for f in dataclasses.fields(Attempt))
_AUDIT_FIELDS = tuple(f.name for f in dataclasses.fields(AuditEvent))

ALL_STATUSES = tuple(s.value for s in RunStatus)
UNFINISHED = tuple(s.value for s in RunStatus if s not in TERMINAL_STATUSES)

# SQLite's default cap on bound variables is 999 in old builds; stay well below it.
CHUNK = 500


def _owner_gone(worker: Any) -> Any:
    """PostgreSQL: whether the owner ``worker`` names is gone (its advisory lock is
    free: ``squidmesh/storage/liveness.py``). A free lock is taken until the
    transaction ends, which is harmless: its owner is gone."""
    return sa.func.pg_try_advisory_xact_lock(
        sa.func.hashtextextended(sa.literal(liveness.ADVISORY_PREFIX) + worker, 0)
    )


@dataclasses.dataclass
class FlowHeads:
    """The rows of ``Queries.flow_waiting`` a queue-aware claim may take."""

    waiting: list[Waiting] = dataclasses.field(default_factory=list)
    #: when each (queue, key) of them last had a turn (absent: never, or forgotten)
    served: dict[tuple[str, str | None], datetime] = dataclasses.field(default_factory=dict)
    jobs: dict[int, Job] = dataclasses.field(default_factory=dict)

    def choose(
        self,
        *,
        running: Mapping[tuple[str, str | None], int],
        starts: Mapping[str, int],
        queues: Mapping[str, Queue],
        limit: int,
    ) -> list[Waiting]:
        """The heads to take (``flow_claim.plan``), given the jobs of each (queue, key)
        running and the starts within each rate window."""
        return plan(
            self.waiting,
            running=running,
            starts=starts,
            served=self.served,
            queues=queues,
            limit=limit,
        )


def flow_heads(
    rows: Iterable[Sequence[Any]], *, stale: datetime, owner_lives: Callable[[str], bool]
) -> FlowHeads:
    """The heads of ``rows`` (``Queries.flow_waiting``), without the jobs whose lease
    expired after ``stale`` and whose owner lives (``takeable`` false on PostgreSQL;
    asked of ``owner_lives`` where the database leaves it NULL)."""
    heads = FlowHeads()
    for row in rows:
        holder, until, takeable = row[7], row[8], row[13]
        if takeable is None and until is not None:
            takeable = t.utc(until) <= stale or not owner_lives(holder)
        if takeable is False:
            continue  # an expired lease whose owner still lives: not taken over
        queue, key = row[9], row[10]
        heads.waiting.append(Waiting(row[0], queue, key, int(row[11] or 0), t.utc(row[5])))
        if row[12] is not None:
            heads.served[(queue, key)] = t.utc(row[12])
        heads.jobs[row[0]] = job_from_row(row)
    return heads


def flow_forgets(
    queues: Mapping[str, Queue], rated: Iterable[str], now: datetime
) -> list[dict[str, Any]]:
    """The parameters of ``Queries.flow_forget_starts`` for the ``rated`` queues:
    the starts before each one's window are forgotten."""
    forgets = []
    for name in rated:
        rate = queues[name].rate
        assert rate is not None
        forgets.append({"queue": name, "before": now - timedelta(seconds=rate.per)})
    return forgets


def flow_grants(
    chosen: Sequence[Waiting], queues: Mapping[str, Queue], at: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What a claim records of the jobs it ``chosen`` at ``at``: the starts of
    rate-limited queues (``Queries.flow_add_starts``), and each (queue, key)'s turn
    (``Queries.flow_serve``, in a fixed order so concurrent claims lock rows alike)."""
    begun = [{"queue": w.queue, "at": at} for w in chosen if queues[w.queue].rate is not None]
    turns = sorted({(w.queue, w.key or NO_KEY) for w in chosen})
    return begun, [{"queue": q, "flow_key": k, "served_at": at} for q, k in turns]


def run_from_row(row: Sequence[Any]) -> RunRecord:
    return RunRecord(*row)


def job_from_row(row: Sequence[Any]) -> Job:
    # Column order of Queries.job_columns; run_at made UTC here too, for the rows
    # psycopg returns directly (``storage/pg_flow.py``).
    return Job(
        kind=row[1],
        run_id=row[2],
        seq=row[3],
        attempt=row[4],
        run_at=t.utc(row[5]),
        data=row[6],
        id=row[0],
    )


def claimed_jobs(rows: Iterable[Sequence[Any]]) -> list[Job]:
    """The jobs of a claim's rows in claim order, (run_at, id): RETURNING gives none."""
    return sorted((job_from_row(row) for row in rows), key=_claim_order)


def _claim_order(job: Job) -> tuple[datetime, int]:
    assert job.run_at is not None and job.id is not None
    return (job.run_at, job.id)


class Queries:
    """The statements of one dialect ("sqlite" or "postgresql")."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        pg = dialect == "postgresql"
        runs, entries, jobs = t.runs, t.entries, t.jobs
        b = sa.bindparam

        # Column order equals RunRecord's fields, so a row is RunRecord(*row).
        run_columns = [runs.c[name] for name in RUN_FIELDS]
        select_run = sa.select(*run_columns)
        self.get_run = select_run.where(runs.c.id == b("id"))
        # NO KEY UPDATE: serializes writers of the run without blocking the foreign-key
        # checks of rows inserted for it (those take KEY SHARE locks on the run).
        self.lock_run = self.get_run.with_for_update(key_share=True) if pg else self.get_run
        self.set_payload = (
            sa.update(runs).where(runs.c.id == b("b_id")).values(payload=b("payload", type_=t.JSON))
        )
        # Id-prefix lookup as a primary-key range: id >= :low AND id < :high.
        self.run_ids_in_range = (
            sa.select(runs.c.id)
            .where(runs.c.id >= b("low"), runs.c.id < b("high"))
            .order_by(runs.c.id)
            .limit(b("n"))
        )
        self.find_run_by_key = select_run.where(
            runs.c.workflow == b("workflow"), runs.c.idempotency_key == b("key")
        )
        self._select_run = select_run
        # The children of a run: the (parent_run_id, created_at, id) index, in order.
        self.list_children = select_run.where(runs.c.parent_run_id == b("parent")).order_by(
            runs.c.created_at, runs.c.id
        )
        self.list_children_limited = self.list_children.limit(b("n"))

        self.load_entries = (
            sa.select(*[entries.c[col] for col in ENTRY_COLUMNS])
            .where(entries.c.run_id == b("run_id"))
            .order_by(entries.c.seq)
        )
        #: PostgreSQL: the whole history as one JSON document of rows (each an array in
        #: ``Entry`` field order, NULL when there is none). A long history's cold load
        #: was mostly the driver decoding five JSON columns per row, one small parse
        #: each; one parse of one document costs about half (B3).
        self.load_entries_document = (
            sa.select(
                sa.func.json_agg(
                    aggregate_order_by(
                        sa.func.json_build_array(*[entries.c[col] for col in ENTRY_COLUMNS]),
                        entries.c.seq,
                    )
                )
            ).where(entries.c.run_id == b("run_id"))
            if pg
            else None
        )
        # Published state: the run's publish entries (a range of the primary key).
        self.load_published = (
            sa.select(entries.c.name, entries.c.result)
            .where(entries.c.run_id == b("run_id"), entries.c.kind == "publish")
            .order_by(entries.c.seq)
        )

        attempts = t.attempts
        # A first attempt has no row while it runs: its first saved heartbeat writes its
        # running row (for a step of the run that runs), later ones update it while it
        # runs; an ended attempt's row stays as it is.
        running: dict[str, Any] = {
            "run_id": b("b_run_id", type_=attempts.c.run_id.type),
            "seq": b("b_seq", type_=sa.Integer),
            "number": b("b_number", type_=sa.Integer),
            "status": sa.literal("running"),
            "started_at": b("b_started_at", type_=sa.Text),
            "worker": b("b_worker", type_=sa.Text),
            "heartbeat": b("b_heartbeat", type_=t.JSON),
        }
        beat = (sqlite_insert(attempts) if not pg else pg_insert(attempts)).from_select(
            list(running),
            sa.select(*running.values()).where(
                entries.c.run_id == b("b_run_id"),
                entries.c.seq == b("b_seq"),
                entries.c.status == "running",
            ),
        )
        # RETURNING tells whether a row was written (psycopg's rowcount of this upsert
        # does not).
        self.record_heartbeat = beat.on_conflict_do_update(
            index_elements=[attempts.c.run_id, attempts.c.seq, attempts.c.number],
            set_={"heartbeat": beat.excluded.heartbeat},
            where=attempts.c.status == "running",
        ).returning(attempts.c.number)
        self.load_attempts = (
            sa.select(attempts.c.seq, *[attempts.c[name] for name in _ATTEMPT_FIELDS])
            .where(attempts.c.run_id == b("run_id"))
            .order_by(attempts.c.seq, attempts.c.number)
        )

        audit = t.audit_events
        self.load_audit = (
            sa.select(*[audit.c[name] for name in _AUDIT_FIELDS])
            .where(audit.c.run_id == b("run_id"))
            .order_by(audit.c.id)
        )

        events = t.events
        self.add_event = sa.insert(events).returning(events.c.id)
        self.load_events = (
            sa.select(events.c.id, events.c.name, events.c.data)
            .where(events.c.run_id == b("run_id"))
            .order_by(events.c.id)
        )
        self.delete_events = sa.delete(events).where(
            events.c.run_id == b("run_id"), events.c.id.in_(b("ids", expanding=True))
        )

        job_columns = (
            jobs.c.id,
            jobs.c.kind,
            jobs.c.run_id,
            jobs.c.seq,
            jobs.c.attempt,
            jobs.c.run_at,
            jobs.c.data,
        )
        now = b("now", type_=t.UtcDateTime())
        lease = {"worker": b("w"), "lease_until": b("until", type_=t.UtcDateTime())}
        self.claim_jobs: sa.Executable
        if pg:
            # An expired lease is taken over only when its owner's advisory lock is free
            # (the owner is gone: see squidmesh/storage/liveness.py), or it went stale;
            # never because the owner's clock, or ours, says so. ``now`` is the caller's
            # clock, which on PostgreSQL is the database's (squidmesh/runtime/clock.py).
            owner_gone = _owner_gone(jobs.c.worker)
            stale = now - sa.func.make_interval(
                0, 0, 0, 0, 0, 0, sa.literal(liveness.STALE_LEASE_SECONDS)
            )
            picked = (
                sa.select(jobs.c.id)
                .where(
                    jobs.c.run_at <= now,
                    jobs.c.queue.is_(None),
                    sa.or_(
                        jobs.c.lease_until.is_(None),
                        sa.and_(
                            jobs.c.lease_until <= now,
                            sa.or_(jobs.c.lease_until <= stale, owner_gone),
                        ),
                    ),
                )
                .order_by(jobs.c.run_at, jobs.c.id)
                .limit(b("n"))
                .with_for_update(skip_locked=True)
            )
            # One statement: concurrent claimers skip each other's rows instead of waiting.
            self.claim_jobs = (
                sa.update(jobs).where(jobs.c.id.in_(picked)).values(lease).returning(*job_columns)
            )
            self.flow_lock = sa.select(
                sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(b("key"), 0))
            )
            self.owner_gone = sa.select(_owner_gone(b("owner")))
            self.database_time = sa.select(sa.func.clock_timestamp(type_=t.UtcDateTime()))
        else:
            # SQLite: the transaction already holds the database write lock. Owners are
            # judged alive in Python (one machine: by process id), so take more
            # candidates than wanted.
            self.claim_jobs = (
                sa.select(*job_columns, jobs.c.worker, jobs.c.lease_until)
                .where(
                    jobs.c.run_at <= now,
                    jobs.c.queue.is_(None),
                    sa.or_(jobs.c.lease_until.is_(None), jobs.c.lease_until <= now),
                )
                .order_by(jobs.c.run_at, jobs.c.id)
                .limit(b("n"))
            )
            self.lease_jobs = (
                sa.update(jobs).where(jobs.c.id.in_(b("ids", expanding=True))).values(lease)
            )
        self.renew_lease = (
            sa.update(jobs)
            .where(jobs.c.id.in_(b("ids", expanding=True)), jobs.c.worker == b("w"))
            .values(lease_until=b("until", type_=t.UtcDateTime()))
        )
        self.job_failures = sa.select(jobs.c.failures, jobs.c.last_error).where(
            jobs.c.id == b("b_id")
        )
        self.release_job = (
            sa.update(jobs)
            .where(jobs.c.id == b("b_id"))
            .values(
                worker=b("w"),
                lease_until=b("until", type_=t.UtcDateTime()),
                run_at=b("run_at", type_=t.UtcDateTime()),
                failures=b("failures"),
                last_error=b("last_error"),
            )
        )
        workers = t.workers
        self.register_worker = sa.insert(workers)
        self.touch_worker = (
            sa.update(workers)
            .where(workers.c.id == b("b_id"))
            .values(heartbeat_at=b("at", type_=t.UtcDateTime()))
        )
        self.stop_worker = (
            sa.update(workers)
            .where(workers.c.id == b("b_id"))
            .values(stopped_at=b("at", type_=t.UtcDateTime()))
        )
        # A leased job becomes claimable again when its lease runs out.
        claimable_at = sa.case(
            (
                sa.or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < jobs.c.run_at),
                jobs.c.run_at,
            ),
            else_=jobs.c.lease_until,
        )
        self.next_job_time = sa.select(sa.func.min(claimable_at, type_=t.UtcDateTime())).where(
            jobs.c.queue.is_(None)
        )
        # Flow control (squidmesh/storage/flow_claim.py): what the queue-aware claim
        # counts and chooses from, for the queues named in "names". PostgreSQL sends the
        # claim's statements through psycopg's pipeline (``storage/pg_flow.py``): lists
        # travel there as one array parameter, not expanded into one per item.

        def among(column: Any, name: str) -> Any:
            if pg:
                return column == sa.any_(b(name, type_=sa.ARRAY(column.type)))
            return column.in_(b(name, expanding=True))

        # Held by no live lease, and due as well: a job a claim may take now. Leased: a
        # slot of its queue (parked jobs hold no slot).
        free = sa.or_(jobs.c.lease_until.is_(None), jobs.c.lease_until <= now)
        ready = sa.and_(jobs.c.run_at <= now, free)
        leased = sa.and_(
            jobs.c.worker.is_not(None), jobs.c.worker != PARKED, jobs.c.lease_until > now
        )
        self.flow_running = (
            sa.select(jobs.c.queue, jobs.c.flow_key, sa.func.count())
            .where(
                among(jobs.c.queue, "names"),
                leased,
            )
            .group_by(jobs.c.queue, jobs.c.flow_key)
        )
        # Anything claimable in these queues? (the partial index: cheap when queues are
        # declared but hold no work, so the queue-aware claim costs one short query)
        self.flow_any = sa.select(
            sa.exists().where(
                among(jobs.c.queue, "names"),
                ready,
            )
        )
        # Per (queue, key): jobs leased, and jobs claimable (the claim's first look).
        self.flow_counts = (
            sa.select(
                jobs.c.queue,
                jobs.c.flow_key,
                sa.func.sum(sa.case((leased, 1), else_=0)),
                sa.func.sum(sa.case((ready, 1), else_=0)),
            )
            .where(among(jobs.c.queue, "names"))
            .group_by(jobs.c.queue, jobs.c.flow_key)
        )
        # Claimable work of a queue a claim could prefer (``others_waiting``): of another
        # key (or, for calls of no key, of any key), or of a higher priority.
        claimable = (
            jobs.c.queue == b("queue"),
            ready,
        )
        self.flow_others = sa.select(
            sa.exists().where(
                *claimable,
                sa.or_(
                    jobs.c.flow_key.is_(None),
                    jobs.c.flow_key != b("key"),
                    jobs.c.priority > b("priority"),
                ),
            )
        )
        self.flow_others_keyed = sa.select(
            sa.exists().where(
                *claimable,
                sa.or_(jobs.c.flow_key.is_not(None), jobs.c.priority > b("priority")),
            )
        )
        rank = (
            sa.func.row_number()
            .over(
                partition_by=(jobs.c.queue, jobs.c.flow_key),
                order_by=(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id),
            )
            .label("rank")
        )
        ranked = (
            sa.select(
                *job_columns,
                jobs.c.worker,
                jobs.c.lease_until,
                jobs.c.queue,
                jobs.c.flow_key,
                jobs.c.priority,
                rank,
            )
            .where(
                among(jobs.c.queue, "names"),
                ready,
            )
            .subquery("ranked")
        )
        served = t.flow_keys
        # Each head also carries when its key last had a turn (NULL: never, or
        # forgotten), and on PostgreSQL whether it may be taken: a lease that expired
        # but is not stale yet is taken over only from an owner that is gone (its
        # advisory lock free, as in the plain claim); SQLite asks in the process.
        if pg:
            stale = b("stale", type_=t.UtcDateTime())
            takeable: Any = sa.case(
                (
                    sa.and_(ranked.c.lease_until.is_not(None), ranked.c.lease_until > stale),
                    # a lease naming no holder has nobody alive behind it
                    sa.func.coalesce(_owner_gone(ranked.c.worker), sa.true()),
                ),
                else_=sa.true(),
            )
        else:
            takeable = sa.null()
        turn = sa.and_(
            served.c.queue == ranked.c.queue,
            served.c.flow_key == sa.func.coalesce(ranked.c.flow_key, NO_KEY),
        )
        self.flow_waiting = (
            sa.select(
                *[c for c in ranked.c if c.name != "rank"],
                served.c.served_at,
                takeable.label("takeable"),
            )
            .select_from(ranked.outerjoin(served, turn))
            .where(ranked.c.rank <= b("n"))
        )
        starts = t.flow_starts
        self.flow_forget_starts = sa.delete(starts).where(
            starts.c.queue == b("queue"), starts.c.at <= b("before", type_=t.UtcDateTime())
        )
        self.flow_starts = (
            sa.select(starts.c.queue, sa.func.count())
            .where(among(starts.c.queue, "names"))
            .group_by(starts.c.queue)
        )
        self.flow_add_starts = sa.insert(starts).values(
            queue=b("queue"), at=b("at", type_=t.UtcDateTime())
        )
        self.queue_stats = (
            sa.select(
                jobs.c.queue,
                jobs.c.flow_key,
                sa.func.sum(sa.case((leased, 1), else_=0)),
                sa.func.sum(sa.case((ready, 1), else_=0)),
            )
            .where(jobs.c.queue.is_not(None))
            .group_by(jobs.c.queue, jobs.c.flow_key)
            .order_by(jobs.c.queue, jobs.c.flow_key)
        )
        # A pending debounced run's activation: its marker is the job data's flow_key (of
        # no queue). Jobs are few (the work pending now): a scan is cheap.
        self.debounced = (
            sa.select(*job_columns)
            .where(
                jobs.c.kind == "activate",
                jobs.c.worker.is_(None),
                jobs.c.queue.is_(None),
                jobs.c.flow_key == b("marker"),
            )
            .order_by(jobs.c.id)
        )
        self.queue_job = sa.select(jobs.c.queue, jobs.c.priority, jobs.c.run_at).where(
            jobs.c.id == b("id"), jobs.c.queue.is_not(None), ready
        )
        pri = b("priority", type_=sa.Integer())
        at = b("run_at", type_=t.UtcDateTime())
        self.queue_ahead = sa.select(sa.func.count()).where(
            jobs.c.queue == b("queue"),
            ready,
            sa.or_(
                jobs.c.priority > pri,
                sa.and_(
                    jobs.c.priority == pri,
                    sa.or_(jobs.c.run_at < at, sa.and_(jobs.c.run_at == at, jobs.c.id < b("id"))),
                ),
            ),
        )
        self.queue_starts = sa.select(sa.func.count()).where(
            starts.c.queue == b("queue"), starts.c.at > b("since", type_=t.UtcDateTime())
        )
        # A rate-limited queue's window, when claimable work of the queue waits: how many
        # starts it holds and the oldest (``rate_reopens``; no work waiting: a count of 0).
        self.rate_window = sa.select(
            sa.func.count(), sa.func.min(starts.c.at, type_=t.UtcDateTime())
        ).where(
            starts.c.queue == b("queue"),
            starts.c.at > b("since", type_=t.UtcDateTime()),
            sa.exists().where(jobs.c.queue == b("queue"), ready),
        )
        self.flow_forget_keys = sa.delete(served).where(
            served.c.served_at < b("before", type_=t.UtcDateTime())
        )
        upsert = (sqlite_insert(served) if not pg else pg_insert(served)).values(
            queue=b("queue"),
            flow_key=b("flow_key"),
            served_at=b("served_at", type_=t.UtcDateTime()),
        )
        self.flow_serve = upsert.on_conflict_do_update(
            index_elements=[served.c.queue, served.c.flow_key],
            set_={"served_at": upsert.excluded.served_at},
        )
        self.flow_lease = (
            sa.update(jobs)
            .where(
                among(jobs.c.id, "ids"),
                free,
            )
            .values(lease)
        )
        # Due and held by no lease: the backlog workers have yet to claim (parked jobs
        # hold a lease until the year 9999).
        ready_at = b("now", type_=t.UtcDateTime())
        self.count_ready_jobs = sa.select(sa.func.count()).where(
            jobs.c.run_at <= ready_at,
            sa.or_(jobs.c.lease_until.is_(None), jobs.c.lease_until <= ready_at),
        )
        self.load_jobs = (
            sa.select(
                *job_columns, jobs.c.worker, jobs.c.lease_until, jobs.c.failures, jobs.c.last_error
            )
            .where(jobs.c.run_id == b("run_id"))
            .order_by(jobs.c.run_at, jobs.c.id)
        )
        # The sweeper: active runs with no job (jobs are found by their run_id index).
        self._orphans = (
            sa.select(runs.c.id, runs.c.version, runs.c.updated_at)
            .where(
                runs.c.status.in_(b("statuses", expanding=True)),
                runs.c.updated_at < b("cutoff", type_=t.UtcDateTime()),
                # a run's slot of a workflow queue is not a job that moves it on
                ~sa.exists().where(
                    jobs.c.run_id == runs.c.id,
                    sa.or_(jobs.c.worker.is_(None), jobs.c.worker != HOLDING),
                ),
            )
            .order_by(runs.c.updated_at, runs.c.id)
            .limit(b("n"))
        )
        self.find_orphans = self._orphans
        self.find_orphans_after = self._orphans.where(
            sa.tuple_(runs.c.updated_at, runs.c.id)
            > sa.tuple_(b("after_at", type_=t.UtcDateTime()), b("after_id"))
        )

        ticks = t.cron_ticks
        # A plain insert: a second record of a tick must fail (and roll back its run).
        self.add_cron_tick = sa.insert(ticks)
        self.last_cron_tick = sa.select(
            sa.func.max(ticks.c.fire_time, type_=t.UtcDateTime())
        ).where(ticks.c.workflow == b("workflow"), ticks.c.trigger == b("trigger"))

        # Retention: terminal runs last updated before a cutoff, one status at a time so
        # the (status, created_at, id) index serves it as an ordered range scan that
        # stops after :n rows. updated_at >= created_at, so "created_at < cutoff" only
        # bounds the scan; "updated_at < cutoff" is the actual condition. On PostgreSQL
        # concurrent pruners skip each other's rows instead of waiting.
        cutoff = b("cutoff", type_=t.UtcDateTime())
        prunable = (
            sa.select(runs.c.id)
            .where(
                runs.c.status == b("status"),
                runs.c.created_at < cutoff,
                runs.c.updated_at < cutoff,
            )
            .order_by(runs.c.created_at, runs.c.id)
            .limit(b("n"))
        )
        self.find_prunable = prunable.with_for_update(skip_locked=True) if pg else prunable

        # Child rows are deleted explicitly: SQLite cascades only with foreign_keys=ON,
        # which a host's connection may not have.
        ids: sa.BindParameter[Any] = b("ids", expanding=True)
        self.delete_runs = [
            sa.delete(table).where(table.c.run_id.in_(ids))
            for table in (t.attempts, t.entries, t.audit_events, t.events, jobs)
        ]
        self.delete_run_rows = sa.delete(runs).where(runs.c.id.in_(ids))

    @functools.cache  # noqa: B019 - one Queries per dialect, kept forever
    def list_runs(self, status: bool, workflow: bool, before: bool | str) -> sa.Select[Any]:
        """The list_runs query for one combination of filters (built once each)."""
        runs, b = t.runs, sa.bindparam
        query = self._select_run
        if status:
            query = query.where(runs.c.status == b("status"))
        if workflow:
            query = query.where(runs.c.workflow == b("workflow"))
        if before == "keyset":
            # Row-value comparison keeps the (created_at, id) index usable.
            query = query.where(
                sa.tuple_(runs.c.created_at, runs.c.id)
                < sa.tuple_(b("before", type_=t.UtcDateTime()), b("before_id"))
            )
        elif before:
            query = query.where(runs.c.created_at < b("before", type_=t.UtcDateTime()))
        return query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(b("limit"))

    @functools.cache  # noqa: B019 - one Queries per dialect, kept forever
    def search_runs(self, filters: frozenset[str], before: bool | str) -> sa.Select[Any]:
        """The search_runs query for one set of filters (built once each).

        ``filters`` names the filters given: status, workflow, trigger, idempotency_key
        (equality), id_prefix (a range on the primary key, then the exact LIKE) and step.
        """
        runs, b = t.runs, sa.bindparam
        query = self.list_runs("status" in filters, "workflow" in filters, before)
        if "trigger" in filters:
            query = query.where(runs.c.trigger == b("trigger"))
        if "idempotency_key" in filters:
            query = query.where(runs.c.idempotency_key == b("idempotency_key"))
        if "id_prefix" in filters:
            # The range is what the primary key's index serves; LIKE keeps the answer
            # exact whatever the column's collation (the prefix is plain hex and dashes).
            query = query.where(
                runs.c.id >= b("id_low"), runs.c.id < b("id_high"), runs.c.id.like(b("id_like"))
            )
        if "step" in filters:
            # Only unfinished runs are at a step: the status index narrows the scan to them.
            unfinished = [_constant(status) for status in UNFINISHED]
            query = query.where(runs.c.status.in_(unfinished), self._at_step())
        return query

    def _at_step(self) -> sa.ColumnElement[bool]:
        runs, b = t.runs, sa.bindparam
        if self.dialect == "postgresql":
            # The column is json (values kept as written); jsonb has the containment test.
            steps = sa.cast(runs.c.current_steps, postgresql.JSONB)
            return steps.contains(b("step_json", type_=postgresql.JSONB))
        names = sa.func.json_each(runs.c.current_steps).table_valued("value")
        return sa.exists(sa.select(1).select_from(names).where(names.c.value == b("step")))

    @functools.cache  # noqa: B019 - one Queries per dialect, kept forever
    def count_runs(self, workflow: bool, capped: bool) -> sa.Executable:
        """Rows of (status, count). Capped: one bounded index range per status, so the
        cost stays the same however many runs are stored; else one grouped count."""
        runs, b = t.runs, sa.bindparam
        if not capped:
            query = sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)
            return query.where(runs.c.workflow == b("workflow")) if workflow else query
        parts = []
        for status in ALL_STATUSES:
            # The status is written into the SQL, not bound: a prepared statement's generic
            # plan would otherwise pick one access path for common and rare statuses alike.
            inner = sa.select(sa.literal(1)).where(runs.c.status == _constant(status))
            if workflow:
                inner = inner.where(runs.c.workflow == b("workflow"))
            bounded = inner.limit(b("cap")).subquery()
            count = sa.select(sa.func.count()).select_from(bounded).scalar_subquery()
            parts.append(sa.select(_constant(status).label("status"), count.label("n")))
        return sa.union_all(*parts)


def _constant(status: str) -> sa.ColumnElement[str]:
    """A run status as an SQL string literal (statuses are fixed identifiers)."""
    assert status in ALL_STATUSES
    return sa.literal_column(f"'{status}'", sa.Text)


_QUERIES: dict[str, Queries] = {}


def queries_for(dialect: str) -> Queries:
    """The (shared) statements of a dialect."""
    found = _QUERIES.get(dialect)
    if found is None:
        found = _QUERIES[dialect] = Queries(dialect)
    return found
