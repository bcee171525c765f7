"""The ``Store`` port: everything the runtime persists, behind one interface.

Three implementations share one contract test suite: ``InMemoryStore`` (tests, no
durability), ``SqlStore`` on SQLite (the embedded default) and on PostgreSQL.

All work happens inside ``Store.transaction()``: one transaction per state change. Inside
it, ``lock_run`` serializes changes to one run (``SELECT ... FOR UPDATE`` on PostgreSQL; a
database-wide write lock on SQLite; a mutex in memory). Leaving the block commits; an
exception rolls everything back, including the jobs written through it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, Protocol

from squidmesh.core.flow import Queue
from squidmesh.core.history import Entry
from squidmesh.core.records import Attempt, AuditEvent, Job
from squidmesh.core.replay import BufferedEvent

__all__ = [
    "ENTRY_COLUMNS",
    "ENTRY_FIELDS",
    "ENTRY_MUTABLE_COLUMNS",
    "ENTRY_MUTABLE_FIELDS",
    "HOLDING",
    "PARKED",
    "PARKED_UNTIL",
    "RUN_FIELDS",
    "RUN_FIXED_FIELDS",
    "RUN_MUTABLE_FIELDS",
    "SCHEMA_VERSION",
    "Holding",
    "JobWrite",
    "Leadership",
    "QueuedJob",
    "RunRecord",
    "Store",
    "Transaction",
    "Wakeups",
    "WriteBatch",
    "run_id_prefix",
    "run_id_prefix_range",
]

#: the ``worker`` of a parked job, and its lease (no claim ever reaches it)
PARKED = "parked"
#: the ``worker`` of the job that holds a slot of a workflow-level queue for an active
#: run (leased until ``PARKED_UNTIL``; deleted when the run ends): it counts as running
HOLDING = "holding"
PARKED_UNTIL = datetime(9999, 1, 1, tzinfo=timezone.utc)

#: The schema version this code expects; migrations bring a database up to it.
SCHEMA_VERSION = 10


@dataclasses.dataclass
class RunRecord:
    """One row of the runs table."""

    id: str
    workflow: str
    trigger: str
    status: str
    payload: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    result: Any = None
    #: the run's last error: an ``ErrorRecord``'s JSON (``ErrorRecord.from_json`` reads it)
    error: dict[str, Any] | None = None
    reason: str | None = None
    current_steps: list[str] = dataclasses.field(default_factory=list)
    waiting_on: list[int] = dataclasses.field(default_factory=list)
    replayed_from_run_id: str | None = None
    forked_from_run_id: str | None = None
    idempotency_key: str | None = None
    schedule: dict[str, Any] | None = None
    #: set by cancel_run while a step is in flight: {"actor", "reason", "compensate"}
    cancel_request: dict[str, Any] | None = None
    #: the ending that waits for compensations to finish: {"status", "error", "reason",
    #: "plan": [seqs], "failure": {...}}
    pending_outcome: dict[str, Any] | None = None
    #: bumped on every state change; a cached interpreter is valid only at this version
    version: int = 0
    #: the W3C trace context (``traceparent``, ``tracestate``) of the span that started
    #: the run, so every process continues the run's trace; written once, at insert
    trace_context: dict[str, str] | None = None
    #: the run that started this one with sm.child / sm.start_child (schema version 7)
    parent_run_id: str | None = None
    #: the seq of the parent's sm.child entry waiting for this run's outcome; None for a
    #: detached child (sm.start_child), whose ending the parent does not wait for
    parent_seq: int | None = None
    #: lineage of sm.continue_as_new: the run this one continues, and the run that
    #: continues this one (set when it ended with reason continued_as_new)
    continued_from_run_id: str | None = None
    continued_as_run_id: str | None = None


@dataclasses.dataclass(frozen=True)
class QueuedJob:
    """A row of the jobs table: the job and who holds it."""

    job: Job
    #: the worker leasing it (or "outbox:<name>", "parked"), None when nobody does
    worker: str | None = None
    lease_until: datetime | None = None
    #: how often performing it failed, and the last failure
    failures: int = 0
    last_error: str | None = None


@dataclasses.dataclass(frozen=True)
class JobWrite:
    """A job a change writes: new, or taking over the row of a job it finishes."""

    job: Job
    #: the worker it is leased to at once (and until when), or None: anyone may claim it
    worker: str | None = None
    lease_until: datetime | None = None
    #: the id of a job this change finishes whose row becomes this job (a worker running
    #: a run step after step keeps one row instead of deleting and inserting one per step)
    replaces: int | None = None


#: A run row's columns: RunRecord's fields, in order (so a selected row is RunRecord(*row)).
RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunRecord))
#: Entry's fields in declaration order, and the column each is stored in, in the same
#: order (``ord`` holds ``order``: ORDER is reserved), so a selected row is Entry(*row).
ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(Entry))
ENTRY_COLUMNS = tuple("ord" if name == "order" else name for name in ENTRY_FIELDS)

#: The fields of a history entry later changes alter: its outcome and progress. The
#: others (what was called: kind, name, input, parent, loc; when it was recorded) are
#: fixed when the entry is inserted, and an update writes these fields only, so a
#: finished step does not send its input again (schema 10).
ENTRY_MUTABLE_FIELDS = (
    "status",
    "result",
    "error",
    "order",
    "attempts",
    "meta",
    "compensation",
    "wake_at",
    "started_at",
    "completed_at",
)
#: their columns, in the same order
ENTRY_MUTABLE_COLUMNS = tuple(
    dict(zip(ENTRY_FIELDS, ENTRY_COLUMNS, strict=True))[name] for name in ENTRY_MUTABLE_FIELDS
)

#: The fields of a run its state changes alter. The others (what it runs, with what,
#: where it came from, when it was made) are fixed when the run is created: a change does
#: not send them again (``Transaction.write`` writes these fields only).
RUN_MUTABLE_FIELDS = (
    "status",
    "result",
    "error",
    "reason",
    "current_steps",
    "waiting_on",
    "cancel_request",
    "pending_outcome",
    "continued_as_run_id",
    "version",
    "updated_at",
)
#: the fields fixed when a run is created (the engine checks no change alters them)
RUN_FIXED_FIELDS = tuple(
    f.name for f in dataclasses.fields(RunRecord) if f.name not in RUN_MUTABLE_FIELDS
)


@dataclasses.dataclass
class WriteBatch:
    """Every write of one state change, applied together by ``Transaction.write``.

    Collecting them lets PostgreSQL apply a whole change in one round trip. Each run in
    ``runs`` carries its NEW version; the write fails with ``ConcurrentChangeError``
    unless the stored version is the one before it (so it is also an optimistic
    concurrency check), and only its ``RUN_MUTABLE_FIELDS`` are written. A job's
    ``replaces`` must name an existing job (else ``ConcurrentChangeError``: someone
    else finished it). When the write fails, nothing of the batch was written (the
    caller's transaction rolls back; on PostgreSQL the single statement applies nothing).
    """

    #: runs created by this change (written whole, first: the other sections may name
    #: them); a duplicate id or idempotency key fails the write with ``ConflictError``
    runs_insert: list[RunRecord] = dataclasses.field(default_factory=list)
    runs: list[RunRecord] = dataclasses.field(default_factory=list)
    #: (run id, payload): a pending run whose input a later start replaced (a debounce
    #: window); the payload is not one of ``RUN_MUTABLE_FIELDS``, which every step sends
    payloads: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    #: (run id, version) of runs this change read but did not write: the write fails
    #: like a version conflict unless each is still at that version (a change made
    #: without the run's lock proves its judgement this way)
    guards: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    entries_insert: list[tuple[str, Entry]] = dataclasses.field(default_factory=list)
    #: entries stored already: only their ``ENTRY_MUTABLE_FIELDS`` are written (each
    #: must exist, else ``StorageError``)
    entries_update: list[tuple[str, Entry]] = dataclasses.field(default_factory=list)
    attempts: list[tuple[str, int, Attempt]] = dataclasses.field(default_factory=list)
    audits: list[tuple[str, AuditEvent]] = dataclasses.field(default_factory=list)
    jobs_delete: list[int] = dataclasses.field(default_factory=list)
    #: jobs to write, in order (``write`` returns them stored, with their ids)
    jobs_insert: list[JobWrite] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.runs_insert
            or self.runs
            or self.payloads
            or self.guards
            or self.entries_insert
            or self.entries_update
            or self.attempts
            or self.audits
            or self.jobs_delete
            or self.jobs_insert
        )


class Transaction(Protocol):
    """Operations available inside one database transaction."""

    @property
    def connection(self) -> Any:
        """The SQLAlchemy ``Connection`` of this transaction (None in memory)."""

    def write(self, batch: WriteBatch, *, final: bool = False) -> list[Job]:
        """Apply a batch; returns the inserted jobs with their ids, in batch order.
        ``final``: nothing else is sent in this transaction after it, so a store may
        commit together with it (PostgreSQL pipelines the COMMIT: one round trip).

        The one way runs, history entries, attempts, audit events and jobs are written
        (each store has one implementation of each write, held to the same behaviour by
        the contract suite); the other methods read, claim, lease, or keep workers,
        events, cron ticks and pruning."""

    # runs ------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord | None: ...

    def lock_run(self, run_id: str) -> RunRecord | None:
        """Read a run and hold its lock until the transaction ends."""

    def lock_run_with_history(
        self, run_id: str, known_version: int | None
    ) -> tuple[RunRecord, list[Entry] | None] | None:
        """``lock_run``, and the run's history as ``load_entries`` would read it after the
        lock is held, unless the run is at ``known_version`` (the caller has that
        history): then None for it. On PostgreSQL one round trip (BEGIN included)."""

    def find_run_by_key(self, workflow: str, idempotency_key: str) -> RunRecord | None: ...

    def list_children(self, parent_run_id: str, limit: int | None = None) -> list[RunRecord]:
        """The runs started by ``parent_run_id`` (``parent_run_id`` set), oldest first
        (created_at, then id); up to ``limit`` when given. Index-backed."""

    def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: datetime | None = None,
        before_id: str | None = None,
    ) -> list[RunRecord]:
        """Newest first (created_at, then id, descending). ``before`` keeps runs created
        earlier; with ``before_id`` too, it is a keyset cursor: runs that sort after
        (before, before_id), so runs created in the same instant are not skipped."""

    def run_ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        """Ids of up to ``limit`` runs whose id starts with ``prefix`` (in the canonical
        form of ``run_id_prefix``), in id order. A range scan of the primary key
        (``run_id_prefix_range``), so a short prefix among millions of runs stays cheap."""

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
        """``list_runs`` with more filters, all of which must match: ``step`` is a name in
        ``current_steps`` (only unfinished runs are at a step), ``id_prefix`` the start of
        the run id in the canonical form of ``run_id_prefix``. Index-backed for every
        filter except ``step``, which scans the unfinished runs (status index)."""

    def count_runs(
        self, *, workflow: str | None = None, limit: int | None = None
    ) -> dict[str, int]:
        """How many runs have each status (every status a key, zero included),
        optionally of one workflow. With ``limit`` each count stops there (index-backed
        and bounded however many runs are stored)."""

    # history ---------------------------------------------------------------
    def load_entries(self, run_id: str) -> list[Entry]:
        """Every history entry of a run, ordered by seq, in one read."""

    def load_published(self, run_id: str) -> dict[str, Any]:
        """The values the run recorded with ``sm.publish``: the latest per name, names in
        the order they were first published. Reads only the run's publish entries."""

    # attempts --------------------------------------------------------------
    def load_attempts(self, run_id: str) -> dict[int, list[Attempt]]:
        """Attempts by seq, each list ordered by attempt number."""

    def record_heartbeat(self, run_id: str, seq: int, attempt: Attempt) -> bool:
        """Save ``attempt.heartbeat``, the latest heartbeat of attempt ``attempt.number``
        of the step at ``seq``, while that attempt runs; True if saved.

        A first attempt has no row while it runs (``core.state.begin_attempt``): then
        its running row is written, as ``attempt`` gives it, if the step's entry runs.
        An attempt that ended keeps its row unchanged; a step that is not running, or
        that the run does not have, gets no row."""

    # audit -----------------------------------------------------------------
    def load_audit(self, run_id: str) -> list[AuditEvent]:
        """Oldest first, in insertion order."""

    # events sent before the run waited for them ----------------------------
    def add_event(self, run_id: str, name: str, data: Any, at: datetime) -> int: ...

    def load_events(self, run_id: str) -> list[BufferedEvent]:
        """Oldest first."""

    def delete_events(self, run_id: str, ids: Sequence[int]) -> None: ...

    # jobs (the database executor's queue) ----------------------------------
    def claim_jobs(
        self,
        *,
        now: datetime,
        limit: int,
        worker: str,
        lease_until: datetime,
        queues: Mapping[str, Queue] | None = None,
    ) -> list[Job]:
        """Take up to ``limit`` due jobs (run_at <= now, not leased or lease expired),
        leasing them to ``worker``; concurrent claimers never get the same job.

        Jobs of a flow-control queue (``Job.data["queue"]``, ``squidmesh.core.flow``)
        are taken only when ``queues`` names their queue, and then only within its
        limits, counted across every claimer (``squidmesh/storage/flow_claim.py``):
        leased jobs of the queue (and of each key) below ``concurrency`` (and
        ``key_concurrency``), attempt starts within the last ``rate.per`` seconds below
        ``rate.limit``; the best first by priority, keys in fair rotation. Without
        ``queues`` (no queue declared) the claim is the plain one of unqueued jobs, a
        single statement: it needs no transaction around it (``autocommit=True``)."""

    def others_waiting(self, queue: str, key: str | None, priority: int, now: datetime) -> bool:
        """Whether a claimable job of ``queue`` waits that a claim could prefer to one of
        key ``key`` at ``priority``: of another key, or of a higher priority. (A run's
        next step takes over its finished step's slot only when none does: handing slots
        on must not bypass fair rotation or priorities.)"""

    def queue_stats(self, now: datetime) -> list[tuple[str, str | None, int, int]]:
        """(queue, key, running, waiting) of every queue and key that has jobs: running
        are leased (lease not expired, not parked), waiting are due and claimable."""

    def find_debounced(self, marker: str) -> QueuedJob | None:
        """The unclaimed activation job whose data has ``"debounce": marker`` (a pending
        debounced run's first activation), or None. On PostgreSQL it first takes a
        transaction lock on ``marker``, so concurrent starts with one debounce key
        serialize (SQLite's write lock and the memory store's mutex do already)."""

    def queue_position(self, job_id: int, now: datetime) -> int | None:
        """1 + how many claimable jobs of the same queue come before job ``job_id`` in
        priority order (priority descending, then run_at, then id); None when it is not
        a claimable job of a queue. (Fair rotation across keys may take it sooner.)"""

    def queue_starts(self, queue: str, since: datetime) -> int:
        """How many attempts of a rate-limited queue started after ``since`` (as far as
        the claims' record of starts reaches: they forget starts older than the window)."""

    def rate_reopens(self, queues: Mapping[str, Queue], now: datetime) -> datetime | None:
        """When a rate-limited queue among ``queues`` may next have room it has not now:
        of those with claimable work waiting and starts within the window ending at
        ``now``, the earliest time the oldest of those starts leaves its window. None
        when no such queue has work waiting or starts in its window. (A worker that found
        nothing to claim sleeps until then rather than until its next poll. A window not
        full counts too: the claim that found it full may have read a clock a moment
        behind this one; waking at each start's expiry is at most ``rate.limit`` wake-ups
        per window, never a busy loop.)"""

    def renew_lease(
        self,
        job_ids: Sequence[int],
        worker: str,
        lease_until: datetime,
        *,
        now: datetime | None = None,
    ) -> None:
        """Extend the leases ``worker`` holds on these jobs to ``lease_until`` (``now``:
        the caller's clock when it renewed, for stores that judge durations)."""

    def release_job(
        self, job_id: int, *, run_at: datetime, failure: str | None, park_after: int
    ) -> bool:
        """Give back a job whose performing raised: unleased, due at ``run_at``. A
        ``failure`` is counted and kept as its last error; at ``park_after`` failures the
        job is parked instead (leased to "parked" for good: no worker takes it again).
        Returns True when it was parked."""

    # workers ---------------------------------------------------------------
    def register_worker(self, owner: str, host: str, pid: int, at: datetime) -> None:
        """Record a process that performs jobs (see ``squidmesh.storage.liveness``)."""

    def touch_worker(self, owner: str, at: datetime) -> None: ...

    def stop_worker(self, owner: str, at: datetime) -> None: ...

    def owner_alive(self, owner: str) -> bool:
        """Whether the process holding ``owner`` still lives (it holds its lease)."""

    def database_time(self) -> datetime | None:
        """The database server's clock, or None for stores without one of their own."""

    def next_job_time(self) -> datetime | None:
        """The earliest run_at among unclaimed jobs of no queue (None when there are
        none). Queued jobs wait for a slot, not a time: a worker is woken when one
        frees (the change that ends an attempt wakes workers) or by its polling; work
        held back by a rate waits for ``rate_reopens``."""

    def load_jobs(self, run_id: str) -> list[QueuedJob]:
        """The jobs of one run, in claim order (run_at, id)."""

    def count_ready_jobs(self, now: datetime) -> int:
        """How many jobs are due at ``now`` and held by no lease (the backlog waiting
        for a worker; parked jobs are not counted)."""

    def find_orphans(
        self,
        statuses: Sequence[str],
        updated_before: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[tuple[str, int, datetime]]:
        """(id, version, updated_at) of up to ``limit`` runs in one of ``statuses``, last
        updated before ``updated_before``, that have no job at all; ordered by
        (updated_at, id), starting after the keyset cursor ``after``."""

    # cron ------------------------------------------------------------------
    def add_cron_tick(self, workflow: str, trigger: str, fire_time: datetime, run_id: str) -> None:
        """Record that the tick started ``run_id``; a second record of the same
        (workflow, trigger, fire_time) violates a unique constraint."""

    def last_cron_tick(self, workflow: str, trigger: str) -> datetime | None:
        """The latest recorded fire time of a trigger (None if it never fired)."""

    # retention -------------------------------------------------------------
    def find_prunable(
        self, statuses: Sequence[str], updated_before: datetime, limit: int
    ) -> list[str]:
        """Ids of up to ``limit`` runs whose status is one of ``statuses`` and that were
        last updated before ``updated_before``; oldest created first within each status,
        the statuses in the order given. Index-backed on (status, created_at): a run's
        ``updated_at`` is never before its ``created_at``."""

    def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete runs and everything recorded for them; returns how many runs went."""


class Holding(Protocol):
    """What ``Store.hold`` returns."""

    def renew(self) -> None:
        """Make sure the hold is still in place (again after a lost connection)."""

    def release(self) -> None: ...


class Wakeups(Protocol):
    """What ``Store.wakeups`` returns (see ``storage/sessions.py``)."""

    def listen(self, wake: Callable[[], None], stopping: threading.Event, *, name: str) -> None:
        """Call ``wake()`` whenever jobs may have been committed, until ``stopping``."""


class Leadership(Protocol):
    """What ``Store.leadership`` returns: a lock at most one process holds."""

    def acquire(self) -> bool:
        """Take it if no one holds it; False otherwise."""

    def alive(self) -> bool:
        """Whether it is still held."""

    def release(self) -> None: ...


class Store(Protocol):
    """A durable home for runs. ``dialect`` is "memory", "sqlite" or "postgresql"."""

    dialect: str

    def migrate(self) -> list[str]:
        """Create or upgrade the schema; idempotent and safe when called concurrently.
        Returns the names of the migrations applied (empty when already up to date)."""

    def check_schema(self) -> None:
        """Raise ``SchemaOutOfDateError`` when the database is older than this code."""

    def hold(self, owner: str) -> Holding:
        """Hold ``owner`` for as long as this process lives, so that other processes can
        tell it is alive (``Transaction.owner_alive``); ``release()`` lets go."""

    def wakeups(self) -> Wakeups | None:
        """A way for workers to be woken when jobs are committed, or None: they poll."""

    def leadership(self, name: str) -> Leadership:
        """The lock ``name`` (e.g. "cron") that at most one process holds at a time."""

    def transaction(self, *, autocommit: bool = False) -> AbstractContextManager[Transaction]:
        """A transaction. ``autocommit=True`` asks for no explicit transaction, for a
        change made of a single ``write`` (it commits by itself); stores where that
        saves nothing may ignore it."""

    def close(self) -> None: ...


_HEX = frozenset("0123456789abcdef")
# Where the dashes of a canonical run id (8-4-4-4-12 hex digits) fall.
_DASHES = (8, 12, 16, 20)


def run_id_prefix(text: str) -> str | None:
    """The canonical form (lower-case, dashed like ``str(uuid)``) of the beginning of a
    run id, or None when no run id can start with ``text``.

    ``"1A2B3C4D5E"`` and ``"1a2b3c4d-5e"`` both become ``"1a2b3c4d-5e"``; dashes may be
    left out or put anywhere. ``search_runs(id_prefix=...)`` takes this form.
    """
    digits = text.strip().lower().replace("-", "")
    if not digits or len(digits) > 32 or not _HEX.issuperset(digits):
        return None
    parts, start = [], 0
    for end in (*_DASHES, 32):
        if start < len(digits):
            parts.append(digits[start:end])
        start = end
    return "-".join(parts)


def run_id_prefix_range(prefix: str) -> tuple[str, str]:
    """``(low, high)`` with ``low <= id < high`` for exactly the canonical ids starting
    with the canonical ``prefix``: a range an index on the id column serves. ``high``
    raises the last digit by one, to the next hex digit or to "g", so the bound stays
    alphanumeric and sorts the same under the C and the usual language collations."""
    last = prefix[-1]
    bump = "a" if last == "9" else "g" if last == "f" else chr(ord(last) + 1)
    return prefix, prefix[:-1] + bump


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
