"""Writing a state change on PostgreSQL: one call, one round trip.

A ``WriteBatch`` (every write of one state change) travels as one JSON document to the
database function ``squidmesh_write_v3`` (migration 0005), which checks what the change
was decided on (each run written still at the version before its new one, each run only
read still at its version, each entry updated present) and then applies every write, or
raises and applies nothing. Being one statement, it is all or nothing even without an
explicit transaction, so a change made of one batch commits in a single round trip
(``Store.transaction(autocommit=True)``).

Sections a batch does not have are left out of the document (the function skips them),
and a run carries only its ``RUN_MUTABLE_FIELDS``. The alternatives measured against
this (``benchmarks/README.md``): one statement of data-modifying CTEs over ``unnest``
arrays planned and started every node on each call and cost the client more to adapt
its arrays; a pipeline of plain statements cost the client more still.

SQLite applies the same batch statement by statement (``storage/sqlite_write.py``), the
in-memory store with its own methods (``write_batch`` in ``storage/memory.py``); the
contract suite (``tests/contract/test_write_contract.py``) runs every write on all three.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from squidmesh.core.history import Entry
from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.storage import tables as t
from squidmesh.storage.base import RUN_MUTABLE_FIELDS, JobWrite, WriteBatch

__all__ = ["WRITE_FUNCTION", "stored_jobs", "write_document"]

#: the database function applying a document (``{schema}.`` goes in front)
WRITE_FUNCTION = "squidmesh_write_v3"

_ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(Entry))
#: Entry fields by column (the column ``ord`` holds ``Entry.order``: ORDER is reserved)
_ENTRY_KEYS = tuple("ord" if name == "order" else name for name in _ENTRY_FIELDS)
_ATTEMPT_FIELDS = tuple(f.name for f in dataclasses.fields(Attempt))
_AUDIT_FIELDS = tuple(f.name for f in dataclasses.fields(AuditEvent))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else t.utc(value).isoformat()


def _entry(run_id: str, entry: Entry) -> dict[str, Any]:
    row = {key: getattr(entry, name) for key, name in zip(_ENTRY_KEYS, _ENTRY_FIELDS, strict=True)}
    row["run_id"] = run_id
    return row


def _job(write: JobWrite, now: datetime) -> dict[str, Any]:
    job = write.job
    row = {
        "kind": job.kind,
        "run_id": job.run_id,
        "seq": job.seq,
        "attempt": job.attempt,
        "run_at": _iso(job.run_at or now),
        "data": job.data,
        "worker": write.worker,
        "lease_until": _iso(write.lease_until),
        "created_at": _iso(now),
    }
    if write.replaces is not None:
        row["replaces"] = write.replaces
    return row


def write_document(batch: WriteBatch, channel: str, now: datetime | None = None) -> str:
    """The JSON document ``squidmesh_write_v3`` applies for ``batch``; ``channel`` is the
    NOTIFY channel woken when it writes a job anyone may claim."""
    now = now or datetime.now(timezone.utc)
    doc: dict[str, Any] = {}
    if batch.guards:
        doc["guards"] = [{"id": run_id, "version": version} for run_id, version in batch.guards]
    if batch.runs:
        runs = []
        for run in batch.runs:
            row = {name: getattr(run, name) for name in RUN_MUTABLE_FIELDS}
            row["id"] = run.id
            row["updated_at"] = _iso(run.updated_at)
            runs.append(row)
        doc["runs"] = runs
    if batch.entries_insert:
        doc["entries_insert"] = [_entry(r, e) for r, e in batch.entries_insert]
    if batch.entries_update:
        doc["entries_update"] = [_entry(r, e) for r, e in batch.entries_update]
    if batch.attempts:
        attempts = []
        for run_id, seq, attempt in batch.attempts:
            row = {name: getattr(attempt, name) for name in _ATTEMPT_FIELDS}
            row["run_id"], row["seq"] = run_id, seq
            attempts.append(row)
        doc["attempts"] = attempts
    if batch.audits:
        audits = []
        for run_id, event in batch.audits:
            row = {name: getattr(event, name) for name in _AUDIT_FIELDS}
            row["run_id"] = run_id
            audits.append(row)
        doc["audits"] = audits
    if batch.jobs_delete:
        doc["jobs_delete"] = list(batch.jobs_delete)
    if batch.jobs_insert:
        doc["jobs_insert"] = [_job(w, now) for w in batch.jobs_insert]
        # Jobs leased at write are already someone's: waking other workers is waste.
        if any(w.worker is None for w in batch.jobs_insert):
            doc["notify"] = True
            doc["channel"] = channel
    # No ``default=``: every datetime is converted above, so anything else that is not
    # JSON is a bug to hear about, not a value to stringify.
    return json.dumps(doc, allow_nan=False)


def stored_jobs(batch: WriteBatch, ids: Sequence[int], now: datetime) -> list[Job]:
    """The jobs of ``batch`` as written: with the ids the function returned, in order."""
    return [
        dataclasses.replace(w.job, id=job_id, run_at=t.utc(w.job.run_at or now))
        for w, job_id in zip(batch.jobs_insert, ids, strict=True)
    ]
