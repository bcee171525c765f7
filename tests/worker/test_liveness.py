from __future__ import annotations

# Leases are judged by who is alive, on the database's clock, never by a worker's clock
# or by a heartbeat thread that a busy step can starve. Real ``squidmesh worker``
# processes on PostgreSQL; executions are counted in the host table ``step_log``.
import shutil

import pytest

from tests.support.attempts import recorded_attempts
from tests.support.waiting import wait_for
from tests.worker.conftest import Database, Workers

RUNS = "squidmesh.squidmesh_runs"


def _attempts(db: Database, run_id: str) -> list[tuple[int, int, str]]:
    return [(seq, number, status) for _, seq, number, status in recorded_attempts(db.url, [run_id])]


def _starts(db: Database, run_id: str, name: str) -> list[int]:
    rows = db.query(
        "SELECT pid FROM step_log WHERE run_id = %s AND name = %s AND phase = 'start'",
        (run_id, name),
    )
    return [int(pid) for (pid,) in rows]


def test_a_step_holding_the_gil_past_its_lease_is_not_run_twice(
    database: Database, workers: Workers, mesh_on
) -> None:
    client = mesh_on()
    # 2 s leases; the hog holds the GIL for several times that, so its worker's heartbeat
    # thread cannot renew the lease: only the owner's held advisory lock says it is alive.
    first = workers.start("--no-scheduler", "--lease-seconds", "2", concurrency=1)
    first.wait_started()
    run = client.start_run("hogging")
    rid = str(run.id)
    wait_for(lambda: _starts(database, rid, "hog"), 30, "the hog to start")
    second = workers.start("--no-scheduler", "--lease-seconds", "2", concurrency=2)
    second.wait_started()
    wait_for(
        lambda: database.scalar(f"SELECT status FROM {RUNS} WHERE id = %s", (rid,)) == "completed",
        120,
        "the hog to complete",
    )
    # The hog held the GIL well past its 2 s lease (by the database's clock)...
    ((held,),) = database.query(
        "SELECT extract(epoch FROM max(at) - min(at)) FROM step_log WHERE run_id = %s "
        "AND name = 'hog'",
        (rid,),
    )
    assert float(held) > 4.0
    # ...and still ran once, in the worker that began it.
    assert _starts(database, rid, "hog") == [first.pid], workers.outputs()
    assert _attempts(database, rid) == [(0, 1, "completed")], workers.outputs()


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")
def test_a_worker_whose_clock_runs_40s_fast_steals_no_live_lease(
    database: Database, workers: Workers, mesh_on
) -> None:
    client = mesh_on()
    honest = workers.start("--no-scheduler", "--lease-seconds", "3", concurrency=2)
    honest.wait_started()
    run_ids = [str(client.start_run("slow", {"seconds": 4}).id) for _ in range(2)]
    wait_for(
        lambda: all(_starts(database, rid, "slow") for rid in run_ids), 30, "both steps to start"
    )
    fast = workers.start(
        "--no-scheduler",
        "--lease-seconds",
        "3",
        concurrency=2,
        wrapper=("faketime", "-f", "+40s"),
    )
    fast.wait_started()
    wait_for(
        lambda: all(
            database.scalar(f"SELECT status FROM {RUNS} WHERE id = %s", (rid,)) == "completed"
            for rid in run_ids
        ),
        60,
        "both runs to complete",
    )
    for rid in run_ids:
        assert _starts(database, rid, "slow") == [honest.pid], workers.outputs()
        assert _attempts(database, rid) == [(0, 1, "completed"), (1, 1, "completed")]


@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")
def test_a_mesh_reads_the_database_clock_whatever_its_machine_says(
    database: Database, tmp_path
) -> None:
    import subprocess
    import sys

    from tests.worker.conftest import REPO_ROOT

    probe = (
        "import squidmesh as sm, sys\n"
        f"mesh = sm.Mesh({database.url!r})\n"
        "import datetime\n"
        "local = datetime.datetime.now(datetime.timezone.utc)\n"
        "print(mesh.clock().isoformat(), local.isoformat())\n"
        "mesh.close()\n"
    )
    out = subprocess.run(
        ["faketime", "-f", "+40s", sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    ((drift,),) = database.query(
        "SELECT abs(extract(epoch FROM %s::timestamptz - clock_timestamp()))", (out[0],)
    )
    ((skew,),) = database.query(
        "SELECT extract(epoch FROM %s::timestamptz - clock_timestamp())", (out[1],)
    )
    assert float(skew) > 35  # the process's own clock is 40 s ahead of the database's...
    assert float(drift) < 5  # ...yet the Mesh reads the database's (what it printed, aged)
