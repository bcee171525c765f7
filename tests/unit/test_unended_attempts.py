from __future__ import annotations

# A step's first attempt has no attempt row until it ends (squidmesh/core/state.py):
# its entry records it, and every reader of a run's attempts sees it the same way.
from datetime import datetime, timezone

from squidmesh.core import state
from squidmesh.core.history import Entry, History
from squidmesh.core.records import Attempt
from squidmesh.core.retry import Retry

NOW = datetime(2030, 1, 1, 12, tzinfo=timezone.utc)


def _begun(seq: int = 0, worker: str | None = "w1") -> Entry:
    entry = Entry(seq, "step", "charge")
    assert state.begin_attempt(entry, NOW, worker) == 1
    return entry


def test_a_begun_first_attempt_is_read_from_its_entry_until_it_ends() -> None:
    entry = _begun()
    running = Attempt(1, "running", None, NOW.isoformat(), worker="w1")
    assert state.attempt_of(entry, [], 1) == running
    assert state.with_unended_attempts([entry], {}) == {0: [running]}
    # a stored row wins: a heartbeat wrote the running row
    beat = Attempt(1, "running", None, "earlier", worker="w1", heartbeat={"at": "x"})
    assert state.with_unended_attempts([entry], {0: [beat]}) == {0: [beat]}


def test_an_ended_attempt_is_its_row_alone() -> None:
    entry = _begun()
    state.end_attempt(entry)
    assert state.attempt_of(entry, [], 1) is None
    # a copied entry (fork_run) names attempts it did not make: none are invented
    copied = Entry(1, "step", "charge", status="completed", attempts=1)
    assert state.with_unended_attempts([entry, copied], {}) == {}


def test_a_failed_first_attempt_leaves_its_entry_and_a_retry_has_a_row() -> None:
    history = History([_begun()])
    decision, _ = state.fail_attempt(history, 0, ValueError("no"), Retry(max_attempts=2), NOW)
    assert decision.retry
    entry = history[0]
    assert state.RUNNING_WORKER not in entry.meta
    assert state.begin_attempt(entry, NOW, "w2") == 2 and state.needs_running_row(2)
    assert state.RUNNING_WORKER not in entry.meta
    failed = Attempt(1, "failed", {"message": "no"}, NOW.isoformat(), NOW.isoformat(), "w1")
    second = Attempt(2, "running", None, NOW.isoformat(), worker="w2")
    stored = {0: [failed, second]}
    assert state.with_unended_attempts([entry], stored) == stored
    assert state.attempt_of(entry, stored[0], 2) == second


def test_a_completed_first_attempt_leaves_its_entry() -> None:
    history = History([_begun(worker=None)])
    assert state.attempt_of(history[0], [], 1) == Attempt(1, "running", None, NOW.isoformat())
    state.complete_attempt(history, 0, {"ok": True}, NOW)
    assert state.RUNNING_WORKER not in history[0].meta
    assert state.with_unended_attempts(history.entries, {}) == {}
