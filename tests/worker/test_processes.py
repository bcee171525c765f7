from __future__ import annotations

# Real ``squidmesh worker`` processes on one PostgreSQL database: many workers without
# duplicate or lost work, SIGKILL mid-step (lease expiry and redelivery), SIGTERM drain.
import re
import signal
import time
from collections import Counter

from tests.support.attempts import recorded_attempts
from tests.support.waiting import wait_for
from tests.worker.conftest import Database, Workers

RUNS = "squidmesh.squidmesh_runs"
JOBS = "squidmesh.squidmesh_jobs"


def _status_counts(db: Database, workflow: str) -> dict[str, int]:
    rows = db.query(
        f"SELECT status, count(*) FROM {RUNS} WHERE workflow = %s GROUP BY 1", (workflow,)
    )
    return {str(status): int(n) for status, n in rows}


def _log(
    db: Database, run_id: str, name: str | None = None
) -> list[tuple[int, int, int, str, str]]:
    """(seq, attempt, pid, name, phase) rows of ``step_log`` for one run, in order."""
    sql = "SELECT seq, attempt, pid, name, phase FROM step_log WHERE run_id = %s"
    params: tuple[str, ...] = (run_id,)
    if name is not None:
        sql += " AND name = %s"
        params = (run_id, name)
    return [tuple(row) for row in db.query(sql + " ORDER BY id", params)]


def test_three_worker_processes_complete_500_runs_exactly_once(
    database: Database, workers: Workers, mesh_on
) -> None:
    procs = [workers.start("--no-scheduler", concurrency=4) for _ in range(3)]
    client = mesh_on()
    started = time.monotonic()
    run_ids = {str(client.start_run("sequential").id) for _ in range(500)}
    assert len(run_ids) == 500

    def all_done() -> bool:
        counts = _status_counts(database, "sequential")
        return counts.get("completed", 0) == 500 or bool(
            set(counts) - {"pending", "running", "completed"}
        )

    try:
        wait_for(all_done, 90, "500 runs to complete")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: {_status_counts(database, 'sequential')}\n{workers.outputs()}"
        ) from None
    elapsed = time.monotonic() - started
    print(f"\n500 sequential runs on 3 worker processes x 4 threads: {elapsed:.1f}s")

    assert _status_counts(database, "sequential") == {"completed": 500}, workers.outputs()
    results = database.query(f"SELECT id, result::text FROM {RUNS} WHERE workflow = 'sequential'")
    assert {str(rid) for rid, _ in results} == run_ids  # no lost run
    assert {res for _, res in results} == {"3"}

    # Exactly one execution of every (run, seq): no duplicate completion, nothing missed.
    per_step = database.query(
        "SELECT run_id, seq, count(*) FILTER (WHERE phase = 'start'), "
        "count(*) FILTER (WHERE phase = 'done') FROM step_log GROUP BY run_id, seq"
    )
    assert len(per_step) == 1500
    assert {(starts, dones) for _, _, starts, dones in per_step} == {(1, 1)}
    assert {(str(r), s) for r, s, _, _ in per_step} == {(r, s) for r in run_ids for s in (0, 1, 2)}
    attempts = Counter((n, status) for _, _, n, status in recorded_attempts(database.url, run_ids))
    assert attempts == {(1, "completed"): 1500}
    # Every worker did a share of the work (they really competed for the jobs).
    pids = {pid for (pid,) in database.query("SELECT DISTINCT pid FROM step_log")}
    assert pids == {p.pid for p in procs}, workers.outputs()
    assert database.scalar(f"SELECT count(*) FROM {JOBS}") == 0

    workers.stop_all()
    assert [p.proc.returncode for p in procs] == [0, 0, 0], workers.outputs()


def test_sigkill_mid_step_is_redelivered_after_the_lease_and_completes(
    database: Database, workers: Workers, mesh_on
) -> None:
    first = workers.start("--no-scheduler", "--lease-seconds", "2", concurrency=1)
    client = mesh_on()
    run = client.start_run("slow", {"seconds": 2.0})
    rid = str(run.id)
    wait_for(lambda: _log(database, rid, "slow"), 30, "the slow step to start")
    step_runs = client.inspect_run(run.id, include_history=True).step_runs
    assert [(s.name, s.status) for s in step_runs] == [("slow_step", "running")]

    first.proc.kill()  # SIGKILL: no drain, no outcome recorded, the lease is left to expire
    assert first.wait(10) == -signal.SIGKILL
    second = workers.start("--no-scheduler", "--lease-seconds", "2", concurrency=1)
    try:
        wait_for(
            lambda: client.inspect_run(run.id).status in ("completed", "failed", "suspended"),
            40,
            "the run to finish on the second worker",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{workers.outputs()}") from None

    final = client.inspect_run(run.id, include_history=True)
    assert final.status == "completed", workers.outputs()
    assert final.result == {"slow": "slept", "after": 1}
    slow_step = final.step_runs[0]
    assert slow_step.name == "slow_step" and slow_step.status == "completed"
    assert [(a.number, a.status) for a in slow_step.attempts] == [(1, "failed"), (2, "completed")]
    lost = slow_step.attempts[0].error
    assert lost is not None and lost["type"] == "squidmesh.errors.WorkerLost", lost
    assert slow_step.attempts[1].error is None

    rows = _log(database, rid, "slow")
    assert [(attempt, pid, phase) for _, attempt, pid, _, phase in rows] == [
        (1, first.pid, "start"),
        (2, second.pid, "start"),
        (2, second.pid, "done"),
    ]
    # Redelivered only once the killed worker's lease ran out (about 2 s after its claim).
    gap = database.scalar(
        "SELECT extract(epoch FROM max(at) - min(at)) FROM step_log "
        "WHERE run_id = %s AND name = 'slow' AND phase = 'start'",
        (rid,),
    )
    print(f"\nredelivered {float(gap):.2f}s after the killed attempt started")
    assert float(gap) >= 1.5
    assert database.scalar(f"SELECT count(*) FROM {JOBS}") == 0


def test_sigterm_drains_the_step_in_flight_and_claims_nothing_new(
    database: Database, workers: Workers, mesh_on
) -> None:
    worker = workers.start("--no-scheduler", concurrency=2)
    client = mesh_on()
    run = client.start_run("slow", {"seconds": 2.0})
    rid = str(run.id)
    wait_for(lambda: _log(database, rid, "slow"), 30, "the slow step to start")

    worker.signal(signal.SIGTERM)
    # The worker logs this once its claim loop has ended, before it waits for the step in
    # flight: from here on it must take nothing new.
    wait_for(
        lambda: re.search(r"worker \S+ draining 1 job\(s\) in flight", worker.output()),
        30,
        "the worker to stop claiming and drain its one job",
    )
    late = client.start_run("sequential")
    late_id = str(late.id)
    assert worker.wait(30) == 0, worker.output()
    assert "SIGTERM received, draining" in worker.output()

    # The step in flight finished and its outcome was recorded...
    drained = client.inspect_run(run.id, include_history=True)
    assert [(a.number, a.status) for a in drained.step_runs[0].attempts] == [(1, "completed")]
    assert [phase for *_, phase in _log(database, rid, "slow")] == ["start", "done"]
    # ...but nothing further began: not the run's next step, not the run created later.
    assert _log(database, rid, "after") == []
    assert [s.name for s in drained.step_runs if s.status != "pending"] == ["slow_step"]
    assert drained.status == "running"
    assert _log(database, late_id) == []
    assert client.inspect_run(late.id).status == "pending"
    # Their jobs are waiting, leased to nobody, for the next worker.
    leased = database.query(f"SELECT run_id, kind, worker FROM {JOBS} ORDER BY id")
    assert sorted((str(r), k, w) for r, k, w in leased) == sorted(
        [(rid, "step", None), (late_id, "activate", None)]
    )

    replacement = workers.start("--no-scheduler", concurrency=2)
    wait_for(
        lambda: {client.inspect_run(r).status for r in (run.id, late.id)} == {"completed"},
        30,
        "both runs to complete on the next worker",
    )
    replacement.signal(signal.SIGTERM)
    assert replacement.wait(30) == 0
    assert [phase for *_, phase in _log(database, rid, "slow")] == ["start", "done"]


def test_join_and_sleep_workflows_across_processes(
    database: Database, workers: Workers, mesh_on
) -> None:
    for _ in range(2):
        workers.start("--no-scheduler", concurrency=3)
    client = mesh_on()
    joined = [str(client.start_run("joined").id) for _ in range(20)]
    sleepy = [str(client.start_run("sleepy").id) for _ in range(10)]
    wait_for(
        lambda: all(client.inspect_run(r).status == "completed" for r in joined + sleepy),
        40,
        "join and sleep runs to complete",
    )
    assert {client.inspect_run(r).result for r in joined} == {13}
    assert {client.inspect_run(r).result for r in sleepy} == {2}
    per_step = database.query(
        "SELECT count(*) FILTER (WHERE phase = 'done'), count(*) FROM step_log GROUP BY run_id, seq"
    )
    assert {tuple(row) for row in per_step} == {(1, 2)}
    assert len(per_step) == 20 * 3 + 10 * 2
    # The sleep lasted at least its second, measured between the steps around it.
    for rid in sleepy:
        gap = database.scalar(
            "SELECT extract(epoch FROM max(at) - min(at)) FROM step_log WHERE run_id = %s",
            (rid,),
        )
        assert float(gap) >= 0.95
    workers.stop_all()


def test_the_sweeper_of_a_worker_process_revives_a_run_that_lost_its_job(
    database: Database, workers: Workers, mesh_on
) -> None:
    client = mesh_on()
    run = client.start_run("sequential")
    # A bug dropped the run's only job: nothing would ever move it again.
    assert database.query(f"DELETE FROM {JOBS} WHERE run_id = %s RETURNING id", (str(run.id),))
    worker = workers.start("--no-scheduler", "--sweep-interval", "0.2", "--lease-seconds", "2")

    wait_for(
        lambda: (
            database.scalar(f"SELECT status FROM {RUNS} WHERE id = %s", (str(run.id),))
            == "completed"
        ),
        60,
        "the swept run to complete",
    )
    audit = database.query(
        "SELECT type FROM squidmesh.squidmesh_audit_events WHERE run_id = %s ORDER BY id",
        (str(run.id),),
    )
    assert ("reactivated",) in audit
    assert "had no job although it waits on work" in worker.output()
