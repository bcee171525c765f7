"""``InMemoryStore``: the whole ``Store`` port in dicts, for tests and the fake runtime.

It behaves like the SQL stores where the engine could notice a difference: stored values
go through JSON (a tuple comes back as a list, a non-JSON value is a ``StorageError``),
duplicate keys and rows for unknown runs fail like constraint violations, ids are never
reused, and a transaction that raises leaves nothing behind. One re-entrant lock held for
the whole transaction serializes transactions, which is also how ``lock_run`` holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from squidmesh.core.flow import Queue
from squidmesh.core.history import Entry
from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.core.replay import BufferedEvent
from squidmesh.errors import ConcurrentChangeError, ConflictError, StorageError
from squidmesh.storage import flow_claim, liveness
from squidmesh.storage.base import (
    ENTRY_MUTABLE_FIELDS,
    HOLDING,
    PARKED,
    PARKED_UNTIL,
    RUN_MUTABLE_FIELDS,
    QueuedJob,
    RunRecord,
    Store,
    WriteBatch,
)
from squidmesh.storage.sessions import EveryoneLeads
from squidmesh.types import TERMINAL_STATUSES, RunStatus

__all__ = ["InMemoryStore", "InMemoryTransaction"]

_T = TypeVar("_T")
_FINISHED = frozenset(s.value for s in TERMINAL_STATUSES)


def utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already (as the SQL stores do)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _encode(value: Any, what: str) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"cannot store {what}: value is not JSON ({exc})") from exc


class _Codec(Generic[_T]):
    """Packs a record into a row (JSON fields as text) and back into a fresh record.

    Rows are never mutated in place, only replaced, so a shallow copy of a table is a
    faithful snapshot; unpacking decodes the JSON again, so callers get their own objects.
    """

    def __init__(self, cls: type[_T], json_fields: Sequence[str], time_fields: Sequence[str] = ()):
        self.cls = cls
        self.names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        self.json_fields = frozenset(json_fields)
        self.time_fields = frozenset(time_fields)

    def pack(self, record: _T) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name in self.names:
            value = getattr(record, name)
            if name in self.json_fields:
                value = _encode(value, f"{self.cls.__name__}.{name}")
            elif name in self.time_fields and value is not None:
                value = utc(value)
            row[name] = value
        return row

    def unpack(self, row: dict[str, Any]) -> _T:
        values = {
            name: json.loads(value) if name in self.json_fields else value
            for name, value in row.items()
        }
        return self.cls(**values)


_RUNS = _Codec(
    RunRecord,
    (
        "payload",
        "result",
        "error",
        "current_steps",
        "waiting_on",
        "schedule",
        "cancel_request",
        "pending_outcome",
        "trace_context",
    ),
    ("created_at", "updated_at"),
)
_ENTRIES = _Codec(Entry, ("input", "result", "error", "meta", "compensation"))
_ATTEMPTS = _Codec(Attempt, ("error", "heartbeat"))
_AUDIT = _Codec(AuditEvent, ("metadata",))


@dataclasses.dataclass
class _JobRow:
    id: int
    kind: str
    run_id: str | None
    seq: int | None
    attempt: int | None
    run_at: datetime
    data: str
    created_at: datetime
    worker: str | None = None
    lease_until: datetime | None = None
    failures: int = 0
    last_error: str | None = None

    @classmethod
    def of(cls, job_id: int, job: Job, worker: str | None, lease_until: datetime | None) -> _JobRow:
        """The row of a job stored now, leased to ``worker`` when given."""
        now = datetime.now(timezone.utc)
        row = cls(
            id=job_id,
            kind=job.kind,
            run_id=job.run_id,
            seq=job.seq,
            attempt=job.attempt,
            run_at=utc(job.run_at) if job.run_at is not None else now,
            data=_encode(job.data, f"{job.kind} job data"),
            created_at=now,
        )
        if worker is not None:
            row.worker = worker
            row.lease_until = utc(lease_until) if lease_until is not None else None
        return row

    def queued(self) -> QueuedJob:
        return QueuedJob(self.job(), self.worker, self.lease_until, self.failures, self.last_error)

    def job(self) -> Job:
        return Job(
            kind=self.kind,
            run_id=self.run_id,
            seq=self.seq,
            attempt=self.attempt,
            run_at=self.run_at,
            data=json.loads(self.data),
            id=self.id,
        )


def _flow(row: _JobRow) -> tuple[str, str | None, int] | None:
    """(queue, key, priority) of a queued job's row, None for a job of no queue."""
    if '"queue"' not in row.data:
        return None
    data = json.loads(row.data)
    if not isinstance(data, dict) or not isinstance(data.get("queue"), str):
        return None
    key = data.get("flow_key")
    return data["queue"], key if isinstance(key, str) else None, int(data.get("priority") or 0)


def _stat_order(item: tuple[tuple[str, str | None], list[int]]) -> tuple[str, str]:
    return item[0][0], item[0][1] or ""


@dataclasses.dataclass
class _Data:
    runs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # (workflow, idempotency_key) -> run_id: the unique index
    keys: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    # run_id -> seq -> row
    entries: dict[str, dict[int, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    # run_id -> (seq, number) -> row
    attempts: dict[str, dict[tuple[int, int], dict[str, Any]]] = dataclasses.field(
        default_factory=dict
    )
    audit: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    # id -> (run_id, name, data as JSON text, created_at)
    events: dict[int, tuple[str, str, str, datetime]] = dataclasses.field(default_factory=dict)
    jobs: dict[int, _JobRow] = dataclasses.field(default_factory=dict)
    # (workflow, trigger, fire_time) -> run_id
    cron_ticks: dict[tuple[str, str, datetime], str] = dataclasses.field(default_factory=dict)
    # owner -> row of the workers table (rows are replaced, never mutated)
    workers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # (queue, at) of each attempt start of a rate-limited queue within its window
    flow_starts: list[tuple[str, datetime]] = dataclasses.field(default_factory=list)
    # (queue, key) -> when the key was last given a slot (fair rotation across keys)
    flow_keys: dict[tuple[str, str | None], datetime] = dataclasses.field(default_factory=dict)

    def clone(self) -> _Data:
        # Rows are replaced, never mutated (job rows are the exception: copied here).
        return _Data(
            runs=dict(self.runs),
            keys=dict(self.keys),
            entries={k: dict(v) for k, v in self.entries.items()},
            attempts={k: dict(v) for k, v in self.attempts.items()},
            audit={k: list(v) for k, v in self.audit.items()},
            events=dict(self.events),
            jobs={k: dataclasses.replace(v) for k, v in self.jobs.items()},
            cron_ticks=dict(self.cron_ticks),
            workers=dict(self.workers),
            flow_starts=list(self.flow_starts),
            flow_keys=dict(self.flow_keys),
        )


class InMemoryTransaction:
    """One transaction on an ``InMemoryStore``; valid only inside its ``with`` block."""

    def __init__(self, store: InMemoryStore) -> None:
        self._store = store
        self._snapshot: _Data | None = None
        self._closed = False

    @property
    def connection(self) -> Any:
        return None

    # plumbing --------------------------------------------------------------
    def _read(self, method: str) -> _Data:
        if self._closed:
            raise StorageError(f"{method}: the transaction has already ended")
        self._store.calls.append(method)
        return self._store._data

    def _write(self, method: str) -> _Data:
        data = self._read(method)
        if self._snapshot is None:
            # Taken lazily so read-only transactions cost nothing.
            self._snapshot = data.clone()
        return data

    def _rollback(self) -> None:
        if self._snapshot is not None:
            self._store._data = self._snapshot
            self._snapshot = None

    @staticmethod
    def _require_run(data: _Data, run_id: str, what: str) -> None:
        if run_id not in data.runs:
            raise StorageError(f"cannot {what}: run {run_id} does not exist")

    def write(self, batch: WriteBatch, *, final: bool = False) -> list[Job]:
        """The batch through the finer-grained writes below (PostgreSQL and SQLite have
        their own: ``pg_write``, ``sqlite_write``; the contract suite holds all three to
        the same behaviour). A failing write leaves the transaction to roll back."""
        for run in batch.runs_insert:
            self._insert_run(run)
        for run_id, version in batch.guards:
            current = self.get_run(run_id)
            if current is None or current.version != version:
                raise ConcurrentChangeError(
                    f"run {run_id} was changed concurrently; retry the change"
                )
        for run in batch.runs:
            current = self.get_run(run.id)
            if current is None or current.version != run.version - 1:
                raise ConcurrentChangeError(
                    f"run {run.id} was changed concurrently; retry the change"
                )
            self._update_run(
                dataclasses.replace(current, **{f: getattr(run, f) for f in RUN_MUTABLE_FIELDS})
            )
        for run_id, payload in batch.payloads:
            current = self.get_run(run_id)
            if current is None:
                raise StorageError(f"cannot set the payload of run {run_id}: it does not exist")
            self._update_run(dataclasses.replace(current, payload=payload))
        for run_id, entries in _by_run(batch.entries_insert).items():
            self._insert_entries(run_id, entries)
        for run_id, entries in _by_run(batch.entries_update).items():
            self._update_entries(run_id, entries)
        for run_id, seq, attempt in batch.attempts:
            self._save_attempt(run_id, seq, attempt)
        for run_id, event in batch.audits:
            self._add_audit(run_id, event)
        for job_id in batch.jobs_delete:
            self._delete_job(job_id)
        inserted: list[Job] = []
        for write in batch.jobs_insert:
            if write.replaces is None:
                inserted.extend(
                    self._insert_jobs(
                        [write.job], worker=write.worker, lease_until=write.lease_until
                    )
                )
                continue
            replaced = self._replace_job(
                write.replaces, write.job, worker=write.worker, lease_until=write.lease_until
            )
            if replaced is None:
                raise ConcurrentChangeError(
                    f"job {write.replaces} of run {write.job.run_id} is gone: another worker "
                    "finished it; retry the change"
                )
            inserted.append(replaced)
        return inserted

    # runs ------------------------------------------------------------------
    def _insert_run(self, run: RunRecord) -> None:
        data = self._write("insert_run")
        if run.id in data.runs:
            raise ConflictError(f"cannot insert run {run.id}: a run with that id exists")
        row = _RUNS.pack(run)
        self._claim_key(data, run, "insert")
        data.runs[run.id] = row

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._read("get_run").runs.get(run_id)
        return None if row is None else _RUNS.unpack(row)

    def lock_run(self, run_id: str) -> RunRecord | None:
        # The store lock is already held for the whole transaction.
        row = self._read("lock_run").runs.get(run_id)
        return None if row is None else _RUNS.unpack(row)

    def _update_run(self, run: RunRecord) -> None:
        data = self._write("update_run")
        old = data.runs.get(run.id)
        if old is None:
            raise StorageError(f"cannot update run {run.id}: it does not exist")
        row = _RUNS.pack(run)
        self._claim_key(data, run, "update")
        if old["idempotency_key"] is not None and (
            (old["workflow"], old["idempotency_key"]) != (run.workflow, run.idempotency_key)
        ):
            del data.keys[(old["workflow"], old["idempotency_key"])]
        data.runs[run.id] = row

    @staticmethod
    def _claim_key(data: _Data, run: RunRecord, action: str) -> None:
        if run.idempotency_key is None:
            return
        key = (run.workflow, run.idempotency_key)
        holder = data.keys.get(key)
        if holder is not None and holder != run.id:
            raise ConflictError(
                f"cannot {action} run {run.id}: workflow {run.workflow!r} already has a run "
                f"with idempotency key {run.idempotency_key!r}"
            )
        data.keys[key] = run.id

    def lock_run_with_history(
        self, run_id: str, known_version: int | None
    ) -> tuple[RunRecord, list[Entry] | None] | None:
        run = self.lock_run(run_id)
        if run is None:
            return None
        return run, None if run.version == known_version else self.load_entries(run_id)

    def find_run_by_key(self, workflow: str, idempotency_key: str) -> RunRecord | None:
        data = self._read("find_run_by_key")
        run_id = data.keys.get((workflow, idempotency_key))
        return None if run_id is None else _RUNS.unpack(data.runs[run_id])

    def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: datetime | None = None,
        before_id: str | None = None,
    ) -> list[RunRecord]:
        rows = self._read("list_runs").runs.values()
        cutoff = utc(before) if before is not None else None

        def earlier(row: dict[str, Any]) -> bool:
            if cutoff is None:
                return True
            if before_id is None:
                return bool(row["created_at"] < cutoff)
            return bool((row["created_at"], row["id"]) < (cutoff, before_id))

        picked = [
            row
            for row in rows
            if (status is None or row["status"] == status)
            and (workflow is None or row["workflow"] == workflow)
            and earlier(row)
        ]
        picked.sort(key=lambda row: (row["created_at"], row["id"]), reverse=True)
        return [_RUNS.unpack(row) for row in picked[: max(limit, 0)]]

    def list_children(self, parent_run_id: str, limit: int | None = None) -> list[RunRecord]:
        rows = [
            row
            for row in self._read("list_children").runs.values()
            if row["parent_run_id"] == parent_run_id
        ]
        rows.sort(key=lambda row: (row["created_at"], row["id"]))
        if limit is not None:
            rows = rows[: max(limit, 0)]
        return [_RUNS.unpack(row) for row in rows]

    def run_ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        runs = self._read("run_ids_with_prefix").runs
        return sorted(run_id for run_id in runs if run_id.startswith(prefix))[: max(limit, 0)]

    def search_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        trigger: str | None = None,
        step: str | None = None,
        idempotency_key: str | None = None,
        id_prefix: str | None = None,
        limit: int = 50,
        before: datetime | None = None,
        before_id: str | None = None,
    ) -> list[RunRecord]:
        wanted = {
            "status": status,
            "workflow": workflow,
            "trigger": trigger,
            "idempotency_key": idempotency_key,
        }
        wanted = {name: value for name, value in wanted.items() if value is not None}
        cutoff = utc(before) if before is not None else None
        picked = []
        for row in self._read("search_runs").runs.values():
            if any(row[name] != value for name, value in wanted.items()):
                continue
            if id_prefix is not None and not row["id"].startswith(id_prefix):
                continue
            if step is not None and (
                row["status"] in _FINISHED or step not in json.loads(row["current_steps"])
            ):
                continue
            if cutoff is not None and (
                row["created_at"] >= cutoff
                if before_id is None
                else (row["created_at"], row["id"]) >= (cutoff, before_id)
            ):
                continue
            picked.append(row)
        picked.sort(key=lambda row: (row["created_at"], row["id"]), reverse=True)
        return [_RUNS.unpack(row) for row in picked[: max(limit, 0)]]

    def count_runs(
        self, *, workflow: str | None = None, limit: int | None = None
    ) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in RunStatus), 0)
        for row in self._read("count_runs").runs.values():
            if workflow is None or row["workflow"] == workflow:
                counts[row["status"]] = counts.get(row["status"], 0) + 1
        if limit is not None:
            counts = {status: min(n, max(limit, 0)) for status, n in counts.items()}
        return counts

    # history ---------------------------------------------------------------
    def load_entries(self, run_id: str) -> list[Entry]:
        rows = self._read("load_entries").entries.get(run_id, {})
        return [_ENTRIES.unpack(rows[seq]) for seq in sorted(rows)]

    def _insert_entries(self, run_id: str, entries: Sequence[Entry]) -> None:
        data = self._write("insert_entries")
        if not entries:
            return
        self._require_run(data, run_id, "insert history entries")
        rows = data.entries.setdefault(run_id, {})
        packed = [_ENTRIES.pack(entry) for entry in entries]
        fresh: dict[int, dict[str, Any]] = {}
        for row in packed:
            if row["seq"] in rows or row["seq"] in fresh:
                raise ConflictError(
                    f"cannot insert history of run {run_id}: seq {row['seq']} exists"
                )
            fresh[row["seq"]] = row
        rows.update(fresh)

    def _update_entries(self, run_id: str, entries: Sequence[Entry]) -> None:
        data = self._write("update_entries")
        if not entries:
            return
        rows = data.entries.get(run_id, {})
        missing = [entry.seq for entry in entries if entry.seq not in rows]
        if missing:
            raise StorageError(f"cannot update history of run {run_id}: no entries {missing}")
        for entry in entries:
            # its outcome and progress only: what the call recorded stays as inserted
            # (a new row: the one stored may be shared with the transaction's snapshot)
            packed = _ENTRIES.pack(entry)
            row = dict(rows[entry.seq])
            row.update((name, packed[name]) for name in ENTRY_MUTABLE_FIELDS)
            rows[entry.seq] = row

    def load_published(self, run_id: str) -> dict[str, Any]:
        rows = self._read("load_published").entries.get(run_id, {})
        published: dict[str, Any] = {}
        for seq in sorted(rows):
            row = rows[seq]
            if row["kind"] == "publish":
                published[row["name"]] = json.loads(row["result"])
        return published

    # attempts --------------------------------------------------------------
    def _save_attempt(self, run_id: str, seq: int, attempt: Attempt) -> None:
        data = self._write("save_attempt")
        self._require_run(data, run_id, "save an attempt")
        data.attempts.setdefault(run_id, {})[(seq, attempt.number)] = _ATTEMPTS.pack(attempt)

    def record_heartbeat(self, run_id: str, seq: int, attempt: Attempt) -> bool:
        data = self._write("record_heartbeat")
        row = data.attempts.get(run_id, {}).get((seq, attempt.number))
        if row is None:
            entry = data.entries.get(run_id, {}).get(seq)
            if entry is None or entry["status"] != "running":
                return False
            running = dataclasses.replace(attempt, status="running", error=None, finished_at=None)
            data.attempts.setdefault(run_id, {})[(seq, attempt.number)] = _ATTEMPTS.pack(running)
        elif row["status"] == "running":
            data.attempts[run_id][(seq, attempt.number)] = {
                **row,
                "heartbeat": _encode(attempt.heartbeat, "heartbeat"),
            }
        else:
            return False
        return True

    def load_attempts(self, run_id: str) -> dict[int, list[Attempt]]:
        rows = self._read("load_attempts").attempts.get(run_id, {})
        found: dict[int, list[Attempt]] = {}
        for seq, number in sorted(rows):
            found.setdefault(seq, []).append(_ATTEMPTS.unpack(rows[(seq, number)]))
        return found

    # audit -----------------------------------------------------------------
    def _add_audit(self, run_id: str, event: AuditEvent) -> None:
        data = self._write("add_audit")
        self._require_run(data, run_id, "add an audit event")
        data.audit.setdefault(run_id, []).append(_AUDIT.pack(event))

    def load_audit(self, run_id: str) -> list[AuditEvent]:
        return [_AUDIT.unpack(row) for row in self._read("load_audit").audit.get(run_id, [])]

    # buffered events -------------------------------------------------------
    def add_event(self, run_id: str, name: str, data: Any, at: datetime) -> int:
        state = self._write("add_event")
        self._require_run(state, run_id, "buffer an event")
        event_id = next(self._store._event_ids)
        state.events[event_id] = (run_id, name, _encode(data, f"event {name!r}"), utc(at))
        return event_id

    def load_events(self, run_id: str) -> list[BufferedEvent]:
        events = self._read("load_events").events
        return [
            BufferedEvent(id=event_id, name=name, data=json.loads(data))
            for event_id, (owner, name, data, _at) in sorted(events.items())
            if owner == run_id
        ]

    def delete_events(self, run_id: str, ids: Sequence[int]) -> None:
        events = self._write("delete_events").events
        for event_id in ids:
            if event_id in events and events[event_id][0] == run_id:
                del events[event_id]

    # jobs ------------------------------------------------------------------
    def _insert_jobs(
        self,
        jobs: Sequence[Job],
        *,
        worker: str | None = None,
        lease_until: datetime | None = None,
    ) -> list[Job]:
        data = self._write("insert_jobs")
        stored: list[Job] = []
        for job in jobs:
            row = _JobRow.of(next(self._store._job_ids), job, worker, lease_until)
            data.jobs[row.id] = row
            stored.append(row.job())
        return stored

    def _replace_job(
        self,
        job_id: int,
        job: Job,
        *,
        worker: str | None = None,
        lease_until: datetime | None = None,
    ) -> Job | None:
        data = self._write("replace_job")
        if job_id not in data.jobs:
            return None
        row = data.jobs[job_id] = _JobRow.of(job_id, job, worker, lease_until)
        return row.job()

    def claim_jobs(
        self,
        *,
        now: datetime,
        limit: int,
        worker: str,
        lease_until: datetime,
        queues: Mapping[str, Queue] | None = None,
    ) -> list[Job]:
        data = self._write("claim_jobs")
        now = utc(now)
        stale = now - timedelta(seconds=liveness.STALE_LEASE_SECONDS)

        def claimable(row: _JobRow) -> bool:
            if row.run_at > now:
                return False
            if row.lease_until is None:
                return True
            # An expired lease is taken over only from an owner that is gone.
            return row.lease_until <= now and (
                row.lease_until <= stale or not liveness.alive_here(row.worker)
            )

        queued: list[_JobRow] = []
        if queues and limit > 0:
            queued = self._claim_queued(data, now, limit, claimable, queues)
            limit -= len(queued)
        due = sorted(
            (row for row in data.jobs.values() if _flow(row) is None and claimable(row)),
            key=lambda row: (row.run_at, row.id),
        )[: max(limit, 0)]
        for row in [*queued, *due]:
            row.worker = worker
            row.lease_until = utc(lease_until)
        return [row.job() for row in [*queued, *due]]

    def _claim_queued(
        self,
        data: _Data,
        now: datetime,
        limit: int,
        claimable: Any,
        queues: Mapping[str, Queue],
    ) -> list[_JobRow]:
        running: dict[tuple[str, str | None], int] = {}
        waiting: list[flow_claim.Waiting] = []
        for row in data.jobs.values():
            flow = _flow(row)
            if flow is None or flow[0] not in queues:
                continue
            leased = row.lease_until is not None and row.lease_until > now
            if leased and row.worker != PARKED:
                running[flow[:2]] = running.get(flow[:2], 0) + 1
            elif claimable(row):
                waiting.append(flow_claim.Waiting(row.id, *flow, row.run_at))
        starts: dict[str, int] = {}
        kept: list[tuple[str, datetime]] = []
        for name, at in data.flow_starts:
            rate = queues[name].rate if name in queues else None
            if rate is not None and at <= now - timedelta(seconds=rate.per):
                continue
            kept.append((name, at))
            starts[name] = starts.get(name, 0) + 1
        forget = now - flow_claim.PRUNE_SERVED_AFTER
        served = {k: at for k, at in data.flow_keys.items() if at > forget}
        chosen = flow_claim.plan(
            waiting, running=running, starts=starts, served=served, queues=queues, limit=limit
        )
        for item in chosen:
            if queues[item.queue].rate is not None:
                kept.append((item.queue, now))
            served[(item.queue, item.key)] = now
        data.flow_starts = kept
        data.flow_keys = served
        return [data.jobs[item.id] for item in chosen]

    def others_waiting(self, queue: str, key: str | None, priority: int, now: datetime) -> bool:
        now = utc(now)
        for row in self._read("others_waiting").jobs.values():
            flow = _flow(row)
            if flow is None or flow[0] != queue or row.run_at > now:
                continue
            if row.lease_until is not None and row.lease_until > now:
                continue
            if flow[1] != key or flow[2] > priority:
                return True
        return False

    def queue_stats(self, now: datetime) -> list[tuple[str, str | None, int, int]]:
        now = utc(now)
        counts: dict[tuple[str, str | None], list[int]] = {}
        for row in self._read("queue_stats").jobs.values():
            flow = _flow(row)
            if flow is None:
                continue
            slot = counts.setdefault(flow[:2], [0, 0])
            if row.lease_until is not None and row.lease_until > now:
                slot[0] += row.worker != PARKED
            elif row.run_at <= now:
                slot[1] += 1
        return [(q, k, n[0], n[1]) for (q, k), n in sorted(counts.items(), key=_stat_order)]

    def find_debounced(self, marker: str) -> QueuedJob | None:
        data = self._write("find_debounced")
        for row in sorted(data.jobs.values(), key=lambda r: r.id):
            if row.kind != "activate" or row.worker is not None or marker not in row.data:
                continue
            if (json.loads(row.data) or {}).get("debounce") == marker:
                return QueuedJob(row.job(), row.worker, row.lease_until)
        return None

    def queue_position(self, job_id: int, now: datetime) -> int | None:
        now = utc(now)
        jobs = self._read("queue_position").jobs

        def rank(row: _JobRow) -> tuple[int, datetime, int] | None:
            flow = _flow(row)
            leased = row.lease_until is not None and row.lease_until > now
            if flow is None or leased or row.run_at > now:
                return None
            return (-flow[2], row.run_at, row.id)

        mine = jobs.get(job_id)
        key = rank(mine) if mine is not None else None
        if mine is None or key is None:
            return None
        queue = (_flow(mine) or ("",))[0]
        ahead = 0
        for row in jobs.values():
            other = rank(row)
            if other is not None and other < key and (_flow(row) or ("",))[0] == queue:
                ahead += 1
        return ahead + 1

    def queue_starts(self, queue: str, since: datetime) -> int:
        since = utc(since)
        starts = self._read("queue_starts").flow_starts
        return sum(1 for name, at in starts if name == queue and at > since)

    def rate_reopens(self, queues: Mapping[str, Queue], now: datetime) -> datetime | None:
        now = utc(now)
        data = self._read("rate_reopens")
        waiting: set[str] = set()
        for row in data.jobs.values():
            flow = _flow(row)
            if flow is None or flow[0] not in queues or row.run_at > now:
                continue
            if row.lease_until is None or row.lease_until <= now:
                waiting.add(flow[0])
        found: datetime | None = None
        for name in sorted(waiting):
            rate = queues[name].rate
            if rate is None:
                continue
            since = now - timedelta(seconds=rate.per)
            starts = [at for queue, at in data.flow_starts if queue == name and at > since]
            if starts:
                reopens = min(starts) + timedelta(seconds=rate.per)
                found = reopens if found is None else min(found, reopens)
        return found

    def renew_lease(
        self,
        job_ids: Sequence[int],
        worker: str,
        lease_until: datetime,
        *,
        now: datetime | None = None,
    ) -> None:
        jobs = self._write("renew_lease").jobs
        for job_id in job_ids:
            row = jobs.get(job_id)
            if row is not None and row.worker == worker:
                row.lease_until = utc(lease_until)

    def release_job(
        self, job_id: int, *, run_at: datetime, failure: str | None, park_after: int
    ) -> bool:
        row = self._write("release_job").jobs.get(job_id)
        if row is None:
            return False
        if failure is not None:
            row.failures += 1
            row.last_error = failure
        if failure is not None and row.failures >= park_after:
            row.worker, row.lease_until = PARKED, PARKED_UNTIL
            return True
        row.worker, row.lease_until, row.run_at = None, None, utc(run_at)
        return False

    # workers ---------------------------------------------------------------
    def register_worker(self, owner: str, host: str, pid: int, at: datetime) -> None:
        self._write("register_worker").workers[owner] = {
            "host": host,
            "pid": pid,
            "started_at": utc(at),
            "heartbeat_at": utc(at),
            "stopped_at": None,
        }

    def touch_worker(self, owner: str, at: datetime) -> None:
        workers = self._write("touch_worker").workers
        if owner in workers:
            workers[owner] = {**workers[owner], "heartbeat_at": utc(at)}

    def stop_worker(self, owner: str, at: datetime) -> None:
        workers = self._write("stop_worker").workers
        if owner in workers:
            workers[owner] = {**workers[owner], "stopped_at": utc(at)}

    def owner_alive(self, owner: str) -> bool:
        self._read("owner_alive")
        return liveness.alive_here(owner)

    def database_time(self) -> datetime | None:
        return None

    def _delete_job(self, job_id: int) -> None:
        self._write("delete_job").jobs.pop(job_id, None)

    def next_job_time(self) -> datetime | None:
        # A leased job becomes claimable again when its lease runs out.
        times = [
            row.run_at if row.lease_until is None else max(row.run_at, row.lease_until)
            for row in self._read("next_job_time").jobs.values()
            if _flow(row) is None
        ]
        return min(times, default=None)

    def count_ready_jobs(self, now: datetime) -> int:
        now = utc(now)
        return sum(
            1
            for row in self._read("count_ready_jobs").jobs.values()
            if row.run_at <= now and (row.lease_until is None or row.lease_until <= now)
        )

    def load_jobs(self, run_id: str) -> list[QueuedJob]:
        rows = [row for row in self._read("load_jobs").jobs.values() if row.run_id == run_id]
        return [row.queued() for row in sorted(rows, key=lambda row: (row.run_at, row.id))]

    def find_orphans(
        self,
        statuses: Sequence[str],
        updated_before: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[tuple[str, int, datetime]]:
        data = self._read("find_orphans")
        cutoff = utc(updated_before)
        cursor = (utc(after[0]), after[1]) if after is not None else None
        with_jobs = {row.run_id for row in data.jobs.values() if row.worker != HOLDING}
        picked = sorted(
            (row["updated_at"], row["id"], row["version"])
            for row in data.runs.values()
            if row["status"] in statuses
            and row["updated_at"] < cutoff
            and row["id"] not in with_jobs
            and (cursor is None or (row["updated_at"], row["id"]) > cursor)
        )
        return [(run_id, version, at) for at, run_id, version in picked[: max(limit, 0)]]

    # cron ------------------------------------------------------------------
    def add_cron_tick(self, workflow: str, trigger: str, fire_time: datetime, run_id: str) -> None:
        ticks = self._write("add_cron_tick").cron_ticks
        key = (workflow, trigger, utc(fire_time))
        if key in ticks:
            raise ConflictError(
                f"cannot record cron tick {workflow}/{trigger} at {key[2].isoformat()}: "
                "it was recorded already"
            )
        ticks[key] = run_id

    def last_cron_tick(self, workflow: str, trigger: str) -> datetime | None:
        ticks = self._read("last_cron_tick").cron_ticks
        return max((t for w, g, t in ticks if (w, g) == (workflow, trigger)), default=None)

    # retention -------------------------------------------------------------
    def find_prunable(
        self, statuses: Sequence[str], updated_before: datetime, limit: int
    ) -> list[str]:
        rows = self._read("find_prunable").runs.values()
        cutoff = utc(updated_before)
        found: list[str] = []
        for status in dict.fromkeys(statuses):
            if len(found) >= limit:
                break
            picked = sorted(
                (
                    (row["created_at"], row["id"])
                    for row in rows
                    if row["status"] == status and row["updated_at"] < cutoff
                ),
            )
            found.extend(run_id for _, run_id in picked[: limit - len(found)])
        return found

    def delete_runs(self, run_ids: Sequence[str]) -> int:
        data = self._write("delete_runs")
        gone: set[str] = set()
        for run_id in run_ids:
            row = data.runs.pop(run_id, None)
            if row is None:
                continue
            gone.add(run_id)
            if row["idempotency_key"] is not None:
                data.keys.pop((row["workflow"], row["idempotency_key"]), None)
        for run_id in gone:
            data.entries.pop(run_id, None)
            data.attempts.pop(run_id, None)
            data.audit.pop(run_id, None)
        for event_id in [k for k, v in data.events.items() if v[0] in gone]:
            del data.events[event_id]
        # Jobs are deleted by id whether or not their run still existed (as in SQL).
        wanted = set(run_ids)
        for job_id in [k for k, v in data.jobs.items() if v.run_id in wanted]:
            del data.jobs[job_id]
        return len(gone)


class _Held:
    """An owner held by this process (see ``squidmesh.storage.liveness``)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def renew(self) -> None:
        pass

    def release(self) -> None:
        liveness.release(self.owner)


class InMemoryStore:
    """A ``Store`` that keeps everything in memory; ``calls`` logs every method used."""

    dialect = "memory"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._data = _Data()
        # Outside the snapshot, like database sequences: ids are never handed out twice.
        self._event_ids = itertools.count(1)
        self._job_ids = itertools.count(1)
        #: names of the port methods called, in order ("transaction" for each one opened)
        self.calls: list[str] = []

    def reset(self) -> None:
        """Forget every run, job and recorded call."""
        with self._lock:
            self._data = _Data()
            self.calls.clear()

    def migrate(self) -> list[str]:
        self.calls.append("migrate")
        return []

    def wakeups(self) -> None:
        return None  # in-process: Mesh wakes its own workers after each commit

    def leadership(self, name: str) -> EveryoneLeads:
        return EveryoneLeads()

    def hold(self, owner: str) -> _Held:
        liveness.held(owner)
        return _Held(owner)

    def check_schema(self) -> None:
        self.calls.append("check_schema")

    @contextlib.contextmanager
    def transaction(self, *, autocommit: bool = False) -> Iterator[InMemoryTransaction]:
        with self._lock:
            self.calls.append("transaction")
            txn = InMemoryTransaction(self)
            try:
                yield txn
            except BaseException:
                txn._rollback()
                raise
            finally:
                txn._closed = True

    def close(self) -> None:
        self.calls.append("close")


if TYPE_CHECKING:
    _check: Store = InMemoryStore()


def _by_run(rows: Sequence[tuple[str, Entry]]) -> dict[str, list[Entry]]:
    by_run: dict[str, list[Entry]] = {}
    for run_id, entry in rows:
        by_run.setdefault(run_id, []).append(entry)
    return by_run
