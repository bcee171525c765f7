from __future__ import annotations

# Retention: ``Mesh.prune`` deletes finished runs last updated before a cutoff, with
# everything recorded for them, in short batches; active and recent runs stay untouched
# (their history, attempts, audit events, buffered events and jobs included). On the
# memory, SQLite and PostgreSQL stores.
from datetime import timedelta
from typing import Any

import pytest

import squidmesh as sm
from tests.runtime.support import T0, MeshFactory, fails_unchanged
from tests.support import writes


@sm.step(retry=sm.Retry(max_attempts=2))
def flaky(fail: bool) -> str:
    if fail:
        raise sm.NonRetryable("no luck")
    return "ok"


@sm.step
def tick() -> int:
    return 1


@sm.workflow
def quick():
    yield tick()
    return (yield flaky(False))


@sm.workflow
def doomed():
    yield tick()
    yield flaky(True)


@sm.workflow
def waits():
    yield tick()
    yield sm.pause("hold")
    return "released"


@sm.workflow
def sleeps():
    yield tick()
    yield sm.sleep(seconds=3600)
    return "woke"


WORKFLOWS = [quick, doomed, waits, sleeps]
DAY = 24 * 3600


def recorded(factory: MeshFactory, run_id: Any) -> dict[str, Any]:
    """Everything stored for one run, read through the Store port."""
    with factory.probe.transaction() as tx:
        return {
            "run": tx.get_run(str(run_id)),
            "entries": tx.load_entries(str(run_id)),
            "attempts": tx.load_attempts(str(run_id)),
            "audit": tx.load_audit(str(run_id)),
            "events": tx.load_events(str(run_id)),
        }


def job_run_ids(factory: MeshFactory) -> list[str]:
    return sorted(str(job["run_id"]) for job in factory.jobs())


def test_prune_deletes_only_old_finished_runs(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory(WORKFLOWS)
    # Day 0: one run of every terminal status, plus two that are still active.
    old_done = mesh.start_run(quick)
    old_failed = mesh.start_run(doomed)
    old_cancelled = mesh.start_run(waits)
    mesh.send_event(old_cancelled.id, "never_awaited", {"n": 1})  # buffered, kept by cancel
    mesh.cancel_run(old_cancelled.id, actor="op")
    old_paused = mesh.start_run(waits)
    mesh.send_event(old_paused.id, "later", {"n": 2})
    assert [mesh.inspect_run(r.id).status for r in (old_done, old_failed, old_cancelled)] == [
        "completed",
        "failed",
        "cancelled",
    ]
    # A stale job left behind for a finished run goes with it.
    with mesh.store.transaction() as tx:
        writes.insert_jobs(tx, [sm.Job("activate", str(old_done.id), run_at=T0)])

    # Day 10: recent runs, finished or not; one old sleeper is still sleeping.
    mesh_factory.clock.advance(10 * DAY)
    new_done = mesh.start_run(quick)
    new_failed = mesh.start_run(doomed)
    sleeper = mesh.start_run(sleeps)
    kept = [old_paused, new_done, new_failed, sleeper]
    before = {str(r.id): recorded(mesh_factory, r.id) for r in kept}
    # (a first attempt that succeeds is recorded by its entry; a failed one has a row)
    assert before[str(old_paused.id)]["events"] and before[str(new_failed.id)]["attempts"]
    assert recorded(mesh_factory, old_failed.id)["attempts"]  # pruned below
    assert str(sleeper.id) in job_run_ids(mesh_factory)

    seen: list[int] = []
    assert mesh.prune(timedelta(days=7), progress=seen.append) == 3
    assert seen == [3]

    for gone in (old_done, old_failed, old_cancelled):
        assert recorded(mesh_factory, gone.id) == {
            "run": None,
            "entries": [],
            "attempts": {},
            "audit": [],
            "events": [],
        }
        with pytest.raises(sm.RunNotFoundError):
            mesh.inspect_run(gone.id)
    for run in kept:
        assert recorded(mesh_factory, run.id) == before[str(run.id)]
    assert str(old_done.id) not in job_run_ids(mesh_factory)
    assert str(sleeper.id) in job_run_ids(mesh_factory)
    assert {r.id for r in mesh.list_runs()} == {r.id for r in kept}

    # Nothing left to prune: a second pass deletes nothing and reports no batch.
    seen.clear()
    assert mesh.prune(timedelta(days=7), progress=seen.append) == 0
    assert seen == []

    # The kept runs still work.
    mesh.unblock_run(old_paused.id, actor="op")
    assert mesh.inspect_run(old_paused.id).result == "released"


def test_prune_goes_in_batches_and_reports_progress(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([quick])
    runs = [mesh.start_run(quick) for _ in range(5)]
    mesh_factory.clock.advance(DAY)
    recent = mesh.start_run(quick)

    seen: list[int] = []
    assert mesh.prune(timedelta(hours=1), batch_size=2, progress=seen.append) == 5
    assert seen == [2, 4, 5]
    assert [r.id for r in mesh.list_runs()] == [recent.id]
    assert all(recorded(mesh_factory, r.id)["run"] is None for r in runs)


def test_prune_stops_after_a_full_last_batch(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([quick])
    for _ in range(4):
        mesh.start_run(quick)
    mesh_factory.clock.advance(60)
    seen: list[int] = []
    assert mesh.prune(timedelta(seconds=30), batch_size=2, progress=seen.append) == 4
    assert seen == [2, 4]


def test_prune_by_cutoff_datetime_and_status(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([quick, doomed])
    done = mesh.start_run(quick)
    failed = mesh.start_run(doomed)
    mesh_factory.clock.advance(60)

    # A run last updated exactly at the cutoff is not "before" it.
    assert mesh.prune(T0, statuses=["failed"]) == 0
    assert mesh.prune(T0 + timedelta(seconds=1), statuses=[sm.RunStatus.FAILED]) == 1
    assert recorded(mesh_factory, failed.id)["run"] is None
    assert mesh.inspect_run(done.id).status == "completed"
    assert mesh.prune(T0 + timedelta(seconds=1), statuses="completed") == 1
    assert mesh.list_runs() == []


def test_the_age_counts_from_the_last_update(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([waits])
    run = mesh.start_run(waits)  # created on day 0 ...
    mesh_factory.clock.advance(10 * DAY)
    mesh.unblock_run(run.id, actor="op")  # ... and finished on day 10
    assert mesh.inspect_run(run.id).status == "completed"
    mesh_factory.clock.advance(DAY)
    assert mesh.prune(timedelta(days=7)) == 0
    assert mesh.prune(timedelta(hours=1)) == 1


def test_prune_refuses_active_statuses_and_bad_arguments(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([quick, waits])
    mesh.start_run(quick)
    mesh.start_run(waits)
    mesh_factory.clock.advance(DAY)

    error = fails_unchanged(
        mesh_factory, ValueError, mesh.prune, timedelta(0), ["completed", "paused", "running"]
    )
    assert "paused" in str(error) and "running" in str(error)
    assert "completed" not in str(error).split(";")[1].split("(")[0]
    fails_unchanged(mesh_factory, ValueError, mesh.prune, timedelta(0), ["bogus"])
    fails_unchanged(mesh_factory, ValueError, mesh.prune, timedelta(0), [])
    fails_unchanged(mesh_factory, ValueError, mesh.prune, timedelta(0), batch_size=0)
    fails_unchanged(mesh_factory, ValueError, mesh.prune, timedelta(seconds=-1))
    fails_unchanged(mesh_factory, ValueError, mesh.prune, T0.replace(tzinfo=None))
    fails_unchanged(mesh_factory, TypeError, mesh.prune, 7)

    assert mesh.prune(timedelta(0)) == 1  # the completed run; the paused one stays
    assert [r.status for r in mesh.list_runs()] == ["paused"]
