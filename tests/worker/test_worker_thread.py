from __future__ import annotations

# Workers as threads of the test process: LISTEN/NOTIFY wake-up, SQLite, and surviving a
# database that fails for a moment.
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.runtime.worker import Worker
from squidmesh.storage.sql import SqlTransaction
from tests.support.waiting import wait_for
from tests.worker import apps
from tests.worker.conftest import Database


def _first_step_at(db: Database, run_id: str) -> datetime | None:
    """When the run's first step began, by the database's clock (``step_log.at``)."""
    at: datetime | None = db.scalar("SELECT min(at) FROM step_log WHERE run_id = %s", (run_id,))
    return at


class WatchedWake(threading.Event):
    """The worker's wake-up event (``Worker._wake``), watched by the test: how often it
    was set, and whether the claim loop is parked in ``wait()`` with no wake-up pending.
    Only the claim loop waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self._watch = threading.Lock()
        self.sets = 0
        self._waiting = 0

    def set(self) -> None:
        with self._watch:
            self.sets += 1
            super().set()

    def wait(self, timeout: float | None = None) -> bool:
        with self._watch:
            self._waiting += 1
        try:
            return super().wait(timeout)
        finally:
            with self._watch:
                self._waiting -= 1

    def idle(self) -> bool:
        """The claim loop is waiting and nothing has woken it since it began to."""
        with self._watch:
            return self._waiting > 0 and not self.is_set()


def watched_worker(mesh: sm.Mesh, **options: Any) -> tuple[Worker, WatchedWake]:
    worker = Worker(mesh.runner, scheduler=False, concurrency=2, **options)
    wake = worker._wake = WatchedWake()
    return worker.start(), wake


POLL_NEVER = 30.0


def test_idle_worker_wakes_on_notify_not_on_its_poll_interval(database: Database, mesh_on) -> None:
    worker_mesh = mesh_on()
    worker, wake = watched_worker(worker_mesh, poll_interval=POLL_NEVER)
    try:
        wait_for(lambda: database.listening_sessions() == 1, 20, "the worker's LISTEN session")
        # Its first wake-up is the listener's, right after LISTEN (for jobs committed
        # before): once the loop has taken it and is parked again, only a NOTIFY (or the
        # 30 s poll) can wake it.
        wait_for(lambda: wake.sets >= 1 and wake.idle(), 20, "the worker to go idle")
        # Another Mesh (think: the web process): its commits reach the worker only by NOTIFY.
        client = mesh_on()
        before: datetime = database.scalar("SELECT clock_timestamp()")
        run_id = str(client.start_run("sequential").id)
        started = wait_for(lambda: _first_step_at(database, run_id), 20, "the first step")
        # Both ends by the database's clock: commit of the run to its first step.
        latency = (started - before).total_seconds()
        print(f"\nNOTIFY wake-up latency (poll interval 30 s): {latency * 1000:.0f} ms")
        assert latency < POLL_NEVER / 3, latency
        wait_for(lambda: client.inspect_run(run_id).status == "completed", 20, "the run")
        assert worker.performed >= 1 and worker.failures == 0
    finally:
        worker.stop(timeout=10)


def test_without_listen_an_idle_worker_waits_for_its_poll(database: Database, mesh_on) -> None:
    # The control for the test above: the same idle worker with LISTEN off does not see a
    # run committed by another Mesh until its poll interval comes round.
    poll = 3.0
    worker_mesh = mesh_on()
    worker, wake = watched_worker(worker_mesh, poll_interval=poll, listen=False)
    try:
        # Alive: a run of its own Mesh wakes it in-process, and it runs it.
        mine = str(worker_mesh.start_run("sequential").id)
        wait_for(lambda: worker_mesh.inspect_run(mine).status == "completed", 20, "own run")
        # Then it goes idle: parked in its poll wait, nothing pending (its last step's
        # log row was written before, so the poll is due no sooner than `poll` after it).
        wait_for(wake.idle, 20, "the worker to go idle")
        assert database.listening_sessions() == 0
        last_own: datetime = database.scalar(
            "SELECT max(at) FROM step_log WHERE run_id = %s", (mine,)
        )
        client = mesh_on()
        theirs = str(client.start_run("sequential").id)
        started = wait_for(
            lambda: _first_step_at(database, theirs), poll + 20, "the poll to find their run"
        )
        # By the database's clock: the commit did not wake it; its poll did.
        waited = (started - last_own).total_seconds()
        print(f"\nwithout LISTEN, another Mesh's run began {waited:.2f}s after going idle")
        assert waited >= poll - 0.05, waited
        wait_for(lambda: client.inspect_run(theirs).status == "completed", 20, "their run")
        assert worker.failures == 0
    finally:
        worker.stop(timeout=10)


def test_single_worker_thread_on_sqlite_runs_50_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(apps.URL_ENV, raising=False)  # steps log to apps.LOCAL_LOG
    apps.LOCAL_LOG.clear()
    mesh = sm.Mesh(f"sqlite:///{tmp_path / 'worker.db'}", workflows=apps.WORKFLOWS)
    try:
        kinds = ["sequential", "joined", "sleepy", "flaky"]
        expected = {"sequential": 3, "joined": 13, "sleepy": 2, "flaky": 4}
        runs = [(kinds[i % 4], str(mesh.start_run(kinds[i % 4]).id)) for i in range(50)]
        started = time.monotonic()
        worker = mesh.worker(concurrency=4, poll_interval=0.5, scheduler=False)
        terminal = {"completed", "failed", "suspended", "cancelled"}
        wait_for(
            lambda: all(mesh.inspect_run(r).status in terminal for _, r in runs),
            60,
            "50 runs to finish",
            interval=0.2,
        )
        print(f"\n50 runs on one SQLite worker thread: {time.monotonic() - started:.1f}s")
        for kind, rid in runs:
            run = mesh.inspect_run(rid, include_history=True)
            assert (run.status, run.result) == ("completed", expected[kind]), (kind, run)
            if kind == "flaky":
                assert run.step_runs is not None
                flaky_step = next(s for s in run.step_runs if s.name == "flaky_step")
                assert [(a.number, a.status) for a in flaky_step.attempts] == [
                    (1, "failed"),
                    (2, "failed"),
                    (3, "completed"),
                ]
        done = Counter((r["run_id"], r["seq"]) for r in apps.LOCAL_LOG if r["phase"] == "done")
        per_kind = {"sequential": 3, "joined": 3, "sleepy": 2, "flaky": 2}
        assert len(done) == sum(per_kind[k] for k, _ in runs)
        assert set(done.values()) == {1}
        flaky_starts = Counter(
            r["run_id"] for r in apps.LOCAL_LOG if r["name"] == "flaky" and r["phase"] == "start"
        )
        assert set(flaky_starts.values()) == {apps.FLAKY_FAILURES + 1}
        assert worker.failures == 0
        with mesh.store.transaction() as tx:
            assert tx.next_job_time() is None  # no job left behind
    finally:
        mesh.close()
        apps.LOCAL_LOG.clear()


def test_worker_survives_transient_storage_errors_when_claiming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(apps.URL_ENV, raising=False)
    real_claim = SqlTransaction.claim_jobs
    calls = Counter[str]()
    lock = threading.Lock()

    def flaky_claim(self: SqlTransaction, **kwargs: object) -> list[sm.Job]:
        with lock:
            calls["claim"] += 1
            if calls["claim"] <= 2:
                calls["raised"] += 1
                raise sm.StorageError("cannot claim jobs: the database went away (simulated)")
        return real_claim(self, **kwargs)  # type: ignore[arg-type]

    mesh = sm.Mesh(f"sqlite:///{tmp_path / 'flaky.db'}", workflows=apps.WORKFLOWS)
    try:
        run_id = str(mesh.start_run("sequential").id)
        monkeypatch.setattr(SqlTransaction, "claim_jobs", flaky_claim)
        worker = mesh.worker(concurrency=2, poll_interval=0.5, scheduler=False)
        wait_for(lambda: calls["raised"] == 2, 10, "two failed claims")
        wait_for(lambda: mesh.inspect_run(run_id).status == "completed", 15, "the run to complete")
        assert mesh.inspect_run(run_id).result == 3
        assert calls["claim"] > 2
        assert all(t.is_alive() for t in worker._threads)
        # ...and it keeps going: a run started afterwards completes too.
        later = str(mesh.start_run("sequential").id)
        wait_for(lambda: mesh.inspect_run(later).status == "completed", 15, "a later run")
    finally:
        mesh.close()
        apps.LOCAL_LOG.clear()


def test_a_job_row_carried_on_to_the_next_step_is_updated_in_place(
    database: Database, mesh_on: Any
) -> None:
    # Eager continuation hands a step's job row on to the run's next step. The row keeps
    # its due time (run_at, indexed for the claim order) and its run, so PostgreSQL
    # updates it in place (a HOT update: no new index entries). Counted from
    # pg_stat_user_tables, which a session reports when it ends.
    def updates() -> tuple[int, int]:
        row = database.query(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE schemaname = 'squidmesh' AND relname = 'squidmesh_jobs'"
        )[0]
        return int(row[0]), int(row[1])

    runs = 5
    before = updates()
    mesh = mesh_on()
    mesh.worker(concurrency=1)
    started = [str(mesh.start_run("sequential").id) for _ in range(runs)]
    wait_for(
        lambda: all(mesh.inspect_run(r).status == "completed" for r in started), 30, "the runs"
    )
    mesh.close()  # its sessions end and report their counters
    # Each run: its activation's claim, then three carry-ons (activation to step one,
    # one to two, two to three); the last step's row is deleted with the run's end.
    after = wait_for(
        lambda: (now := updates())[0] >= before[0] + 4 * runs and now,
        30,
        "the workers' sessions to report their updates",
    )
    updated, in_place = after[0] - before[0], after[1] - before[1]
    # Every one of them can be in place; a full page would be the only exception.
    assert in_place >= 0.8 * updated, (updated, in_place)
