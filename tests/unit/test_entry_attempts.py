from __future__ import annotations

# A step's first attempt is recorded by its history entry, not an attempt row, while it
# runs and, when it succeeds on a named worker, after that (squidmesh/core/state.py);
# every reader of a run's attempts sees the same attempts either way.
from datetime import datetime, timedelta, timezone

from squidmesh.core import state
from squidmesh.core.history import Entry, History
from squidmesh.core.records import Attempt
from squidmesh.core.retry import Retry

NOW = datetime(2030, 1, 1, 12, tzinfo=timezone.utc)
LATER = NOW + timedelta(seconds=3)


def _begun(seq: int = 0, worker: str | None = "w1") -> Entry:
    entry = Entry(seq, "step", "charge")
    assert state.begin_attempt(entry, NOW, worker) == 1
    return entry


def test_a_running_first_attempt_is_read_from_its_entry() -> None:
    entry = _begun()
    running = Attempt(1, "running", None, NOW.isoformat(), worker="w1")
    assert state.attempt_of(entry, [], 1) == running
    assert state.with_entry_attempts([entry], {}) == {0: [running]}
    # a stored row wins: a heartbeat wrote the running row
    beat = Attempt(1, "running", None, "earlier", worker="w1", heartbeat={"at": "x"})
    assert state.with_entry_attempts([entry], {0: [beat]}) == {0: [beat]}


def test_a_first_attempt_completed_on_a_named_worker_is_its_entry() -> None:
    history = History([_begun()])
    state.complete_attempt(history, 0, {"ok": True}, LATER)
    entry = history[0]
    assert state.entry_records_success(entry, 1)
    done = Attempt(1, "completed", None, NOW.isoformat(), LATER.isoformat(), worker="w1")
    assert state.with_entry_attempts(history.entries, {}) == {0: [done]}


def test_a_first_attempt_without_a_worker_gets_its_row() -> None:
    history = History([_begun(worker=None)])
    assert state.attempt_of(history[0], [], 1) == Attempt(1, "running", None, NOW.isoformat())
    state.complete_attempt(history, 0, 1, LATER)
    assert not state.entry_records_success(history[0], 1)
    state.end_attempt(history[0])  # the caller writes its row
    assert state.with_entry_attempts(history.entries, {}) == {}


def test_a_copy_and_an_ended_attempt_invent_nothing() -> None:
    entry = _begun()
    state.end_attempt(entry)
    assert state.attempt_of(entry, [], 1) is None
    # a copied entry (fork_run) names attempts it did not make
    copied = Entry(1, "step", "charge", status="completed", attempts=1)
    assert state.with_entry_attempts([entry, copied], {}) == {}


def test_a_failed_first_attempt_leaves_its_entry_and_a_retry_has_a_row() -> None:
    history = History([_begun()])
    decision, _ = state.fail_attempt(history, 0, ValueError("no"), Retry(max_attempts=2), NOW)
    assert decision.retry
    entry = history[0]
    assert state.ATTEMPT_WORKER not in entry.meta
    assert state.begin_attempt(entry, NOW, "w2") == 2 and state.needs_running_row(2)
    assert state.ATTEMPT_WORKER not in entry.meta
    failed = Attempt(1, "failed", {"message": "no"}, NOW.isoformat(), NOW.isoformat(), "w1")
    second = Attempt(2, "running", None, NOW.isoformat(), worker="w2")
    stored = {0: [failed, second]}
    assert state.with_entry_attempts([entry], stored) == stored
    assert state.attempt_of(entry, stored[0], 2) == second
    state.complete_attempt(history, 0, 1, LATER)
    assert not state.entry_records_success(entry, 2)
