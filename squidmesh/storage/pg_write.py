"""Writing a state change on PostgreSQL: one call, one round trip.

A ``WriteBatch`` (every write of one state change) travels to the database function
``squidmesh_write_v3`` (migrations 0005, 0007), one JSON parameter per section (runs,
entries, attempts, ...; NULL when the change has none), which checks what the change
was decided on (each run written still at the version before its new one, each run only
read still at its version, each entry updated present) and then applies every write, or
raises and applies nothing. Being one statement, it is all or nothing even without an
explicit transaction, so a change made of one batch commits in a single round trip
(``Store.transaction(autocommit=True)``).

A run carries only its ``RUN_MUTABLE_FIELDS``, an updated entry only its
``ENTRY_MUTABLE_FIELDS`` (migration 0010). Sections are separate parameters
because a ``json`` value is parsed again at every ``->``: picking them out of one
document cost a third of the function's time. The alternatives measured against
this (``benchmarks/README.md``): one statement of data-modifying CTEs over ``unnest``
arrays planned and started every node on each call and cost the client more to adapt
its arrays; a pipeline of plain statements cost the client more still.

SQLite applies the same batch statement by statement (``storage/sqlite_write.py``), the
in-memory store with its own methods (``InMemoryTransaction.write``); the
contract suite (``tests/contract/test_write_contract.py``) runs every write on all three.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from squidmesh.core.history import Entry
from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.storage import tables as t
from squidmesh.storage.base import (
    ENTRY_COLUMNS,
    ENTRY_FIELDS,
    ENTRY_MUTABLE_COLUMNS,
    ENTRY_MUTABLE_FIELDS,
    RUN_FIELDS,
    RUN_MUTABLE_FIELDS,
    JobWrite,
    RunRecord,
    WriteBatch,
)

__all__ = [
    "CREATE_FUNCTION",
    "SECTIONS",
    "WRITE_FUNCTION",
    "stored_jobs",
    "write_call",
    "write_params",
]

#: the database function applying a document (``{schema}.`` goes in front)
WRITE_FUNCTION = "squidmesh_write_v3"
#: the one that first inserts new runs (whole rows), then applies the rest like
#: ``WRITE_FUNCTION`` (migration 0009): starting a run is one call too
CREATE_FUNCTION = "squidmesh_create_v1"

_ATTEMPT_FIELDS = tuple(f.name for f in dataclasses.fields(Attempt))
_AUDIT_FIELDS = tuple(f.name for f in dataclasses.fields(AuditEvent))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else t.utc(value).isoformat()


def _entry(run_id: str, entry: Entry) -> dict[str, Any]:
    row = {key: getattr(entry, name) for key, name in zip(ENTRY_COLUMNS, ENTRY_FIELDS, strict=True)}
    row["run_id"] = run_id
    return row


def _entry_update(run_id: str, entry: Entry) -> dict[str, Any]:
    """An entry's outcome and progress, by its key: what an update writes (schema 10)."""
    row = {
        key: getattr(entry, name)
        for key, name in zip(ENTRY_MUTABLE_COLUMNS, ENTRY_MUTABLE_FIELDS, strict=True)
    }
    row["run_id"], row["seq"] = run_id, entry.seq
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


#: the function's parameters, in order (each a section of the batch, JSON or NULL; then
#: the NOTIFY channel, or NULL)
SECTIONS = (
    "guards",
    "runs",
    "entries_insert",
    "entries_update",
    "attempts",
    "audits",
    "jobs_delete",
    "jobs_insert",
)


def write_call(schema: str, *, creates: bool = False) -> str:
    """The statement calling the write function of ``schema`` (positional parameters);
    with ``creates``, the function that inserts new runs first (their rows lead)."""
    function = CREATE_FUNCTION if creates else WRITE_FUNCTION
    params = ", ".join(["%s::json"] * (len(SECTIONS) + creates) + ["%s"])
    return f"SELECT {schema}.{function}({params})"


def _new_run(run: RunRecord) -> dict[str, Any]:
    row = {name: getattr(run, name) for name in RUN_FIELDS}
    row["created_at"], row["updated_at"] = _iso(run.created_at), _iso(run.updated_at)
    return row


def write_params(batch: WriteBatch, channel: str, now: datetime) -> tuple[str | None, ...]:
    """The parameters of ``write_call`` for ``batch``: the new runs when it creates any
    (``write_call(creates=True)``), then each section as JSON text, or None when the
    batch has none; ``channel`` is the NOTIFY channel to wake when the batch writes a
    job anyone may claim (None otherwise). ``batch.payloads`` is not sent here."""
    created: tuple[str, ...] = ()
    if batch.runs_insert:
        created = (json.dumps([_new_run(r) for r in batch.runs_insert], allow_nan=False),)
    sections: dict[str, list[Any]] = {}
    if batch.guards:
        sections["guards"] = [{"id": run_id, "version": v} for run_id, v in batch.guards]
    if batch.runs:
        runs = []
        for run in batch.runs:
            row = {name: getattr(run, name) for name in RUN_MUTABLE_FIELDS}
            row["id"] = run.id
            row["updated_at"] = _iso(run.updated_at)
            runs.append(row)
        sections["runs"] = runs
    if batch.entries_insert:
        sections["entries_insert"] = [_entry(r, e) for r, e in batch.entries_insert]
    if batch.entries_update:
        sections["entries_update"] = [_entry_update(r, e) for r, e in batch.entries_update]
    if batch.attempts:
        attempts = []
        for run_id, seq, attempt in batch.attempts:
            row = {name: getattr(attempt, name) for name in _ATTEMPT_FIELDS}
            row["run_id"], row["seq"] = run_id, seq
            attempts.append(row)
        sections["attempts"] = attempts
    if batch.audits:
        audits = []
        for run_id, event in batch.audits:
            row = {name: getattr(event, name) for name in _AUDIT_FIELDS}
            row["run_id"] = run_id
            audits.append(row)
        sections["audits"] = audits
    if batch.jobs_delete:
        sections["jobs_delete"] = list(batch.jobs_delete)
    if batch.jobs_insert:
        sections["jobs_insert"] = [_job(w, now) for w in batch.jobs_insert]
    # Jobs leased at write are already someone's: waking other workers is waste.
    wake = any(w.worker is None for w in batch.jobs_insert)
    # No ``default=``: every datetime is converted above, so anything else that is not
    # JSON is a bug to hear about, not a value to stringify.
    return (
        *created,
        *(
            None if name not in sections else json.dumps(sections[name], allow_nan=False)
            for name in SECTIONS
        ),
        channel if wake else None,
    )


def stored_jobs(batch: WriteBatch, ids: Sequence[int], now: datetime) -> list[Job]:
    """The jobs of ``batch`` as written: with the ids the function returned, in order."""
    return [
        dataclasses.replace(w.job, id=job_id, run_at=t.utc(w.job.run_at or now))
        for w, job_id in zip(batch.jobs_insert, ids, strict=True)
    ]
