"""Many join runs on several worker processes: no branch result is ever dropped.

An independent review found that, with no faults at all, ``fanout`` runs (a join of three
steps, then a step) on three ``squidmesh worker`` processes with 8 threads each and short
steps left 1-2 runs in 600 stuck: ``waiting_for_join`` with no job left to move them. A
slower thread had put an older live interpreter back into the cache, and a landing that
trusted it judged a branch stale, wrote no run row (so no version check ran) and still
deleted the branch's job.

This soak drives the same load (CI size: the review's own) with the workers' sweeper
off, so the only thing keeping runs alive is the engine itself, and checks from the
database that every run completed with the right result and that no run was ever left
active without a job.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from tests.reliability import harness
from tests.reliability.chaos import JOBS, RUNS, WorkerProcess
from tests.support import postgres

RUNS_TO_START = 600
WORKERS = 3
CONCURRENCY = 8
#: with no change in this many seconds of the database's clock, the soak has settled
QUIET_SECONDS = 10


def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(row) for row in conn.execute(sql).fetchall()]


def _settled(url: str) -> bool:
    """Every run is completed, or nothing changed for QUIET_SECONDS (database clock)."""
    ((active, quiet),) = _query(
        url,
        f"SELECT count(*) FILTER (WHERE status <> 'completed'), "
        f"coalesce(extract(epoch FROM now() - max(updated_at)), 0) FROM {RUNS}",
    )
    return active == 0 or float(quiet) > QUIET_SECONDS  # type: ignore[arg-type]


@pytest.mark.timeout(300)
def test_many_join_runs_on_three_workers_lose_no_branch(pg_server_url: str, tmp_path: Path) -> None:
    url = postgres.create_database(pg_server_url, "join_soak")
    mesh = harness.build_mesh(postgres.sqlalchemy_url(url))
    workers: list[WorkerProcess] = []
    try:
        mesh.migrate()
        harness.create_host_tables(url)
        args = [
            "--concurrency",
            str(CONCURRENCY),
            "--lease-seconds",
            "30",
            "--poll-interval",
            "0.5",
            "--no-scheduler",
            "--sweep-interval",
            "0",  # the sweeper would rescue a stuck run and hide the race
        ]
        workers = [
            WorkerProcess(postgres.sqlalchemy_url(url), tmp_path / f"worker-{i}.log", args, 0.0)
            for i in range(WORKERS)
        ]
        run_ids = {str(mesh.start_run("fanout", {"n": n}).id): n for n in range(RUNS_TO_START)}
        # Bounded by the test timeout; the stop condition is read from the database.
        while not _settled(url) and all(worker.alive for worker in workers):
            time.sleep(0.5)

        orphans = _query(
            url,
            f"SELECT r.id, r.status, r.waiting_on::text FROM {RUNS} r "
            f"WHERE r.status NOT IN ('completed', 'failed', 'cancelled') "
            f"AND NOT EXISTS (SELECT 1 FROM {JOBS} j WHERE j.run_id = r.id)",
        )
        logs = "\n".join(w.output()[-3000:] for w in workers)
        assert orphans == [], f"active runs with no job to move them: {orphans}\n{logs}"
        assert all(worker.alive for worker in workers), logs
        for run_id, n in run_ids.items():
            run = mesh.inspect_run(run_id, include_history=True)
            assert harness.outcome(run) == harness.expected("fanout", n), run_id
        assert _query(url, f"SELECT count(*) FROM {JOBS}") == [(0,)]
    finally:
        for worker in workers:
            worker.terminate()
        mesh.close()
        postgres.drop_database(url)
