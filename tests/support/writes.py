"""Single writes for tests that set up rows, each through ``Transaction.write`` (the
only way a store writes runs, entries, attempts, audit events and jobs)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from squidmesh.core.history import Entry
from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.storage.base import JobWrite, RunRecord, Transaction, WriteBatch


def insert_run(tx: Transaction, run: RunRecord) -> None:
    tx.write(WriteBatch(runs_insert=[run]))


def update_run(tx: Transaction, run: RunRecord) -> None:
    """Write ``run``'s state as a change does: with the next version (``run.version``
    is advanced in place), its mutable fields only."""
    run.version += 1
    tx.write(WriteBatch(runs=[run]))


def insert_entries(tx: Transaction, run_id: str, entries: Sequence[Entry]) -> None:
    tx.write(WriteBatch(entries_insert=[(run_id, entry) for entry in entries]))


def update_entries(tx: Transaction, run_id: str, entries: Sequence[Entry]) -> None:
    tx.write(WriteBatch(entries_update=[(run_id, entry) for entry in entries]))


def save_attempt(tx: Transaction, run_id: str, seq: int, attempt: Attempt) -> None:
    tx.write(WriteBatch(attempts=[(run_id, seq, attempt)]))


def add_audit(tx: Transaction, run_id: str, event: AuditEvent) -> None:
    tx.write(WriteBatch(audits=[(run_id, event)]))


def insert_jobs(
    tx: Transaction,
    jobs: Sequence[Job],
    *,
    worker: str | None = None,
    lease_until: datetime | None = None,
) -> list[Job]:
    """Store ``jobs``, leased to ``worker`` when given; they come back with their ids."""
    writes = [JobWrite(job, worker=worker, lease_until=lease_until) for job in jobs]
    return tx.write(WriteBatch(jobs_insert=writes))


def delete_job(tx: Transaction, job_id: int) -> None:
    tx.write(WriteBatch(jobs_delete=[job_id]))
