from __future__ import annotations

# Child runs on real ``squidmesh worker`` processes over PostgreSQL: a capped fan-out
# whose children run on other processes than their parent, each exactly once, never
# more than the cap in flight (measured from the parent's recorded history, whose
# timestamps are the database's clock), also when a worker is SIGKILLed mid-way.
import signal
from datetime import datetime
from typing import Any

from tests.support.waiting import wait_for
from tests.worker.conftest import Database, Workers

RUNS = "squidmesh.squidmesh_runs"
COUNT, LIMIT = 40, 5


def _most_in_flight(entries: list[Any]) -> int:
    """The largest number of child entries started and not yet settled at one instant
    (a slot freed and taken by the same change counts once: intervals are half-open)."""
    points = []
    for entry in entries:
        points.append((datetime.fromisoformat(entry.started_at), 1))
        points.append((datetime.fromisoformat(entry.completed_at), -1))
    most = current = 0
    for _, step in sorted(points):  # at equal times the -1 sorts first
        current += step
        most = max(most, current)
    return most


def _check_parent(client: Any, database: Database, run_id: str) -> list[Any]:
    run = client.inspect_run(run_id, include_history=True)
    assert run.status == "completed", (run.status, run.error)
    assert run.result == sum(n * n for n in range(COUNT))
    children = [s for s in run.step_runs if s.kind == "child"]
    assert len(children) == COUNT and {s.status for s in children} == {"completed"}
    assert [s.output for s in children] == [n * n for n in range(COUNT)]
    assert _most_in_flight(children) == LIMIT
    rows = database.query(
        f"SELECT status, count(*) FROM {RUNS} WHERE parent_run_id = %s GROUP BY 1", (run_id,)
    )
    assert rows == [("completed", COUNT)]
    return children


def test_children_run_on_other_worker_processes_capped_and_exactly_once(
    database: Database, workers: Workers, mesh_on
) -> None:
    procs = [workers.start("--no-scheduler", concurrency=4) for _ in range(3)]
    for proc in procs:
        proc.wait_started()
    client = mesh_on()
    parents = [
        str(client.start_run("fan_parent", {"count": COUNT, "limit": LIMIT}).id) for _ in range(3)
    ]
    wait_for(
        lambda: all(client.inspect_run(r).status.is_terminal for r in parents),
        90,
        "three fan-outs of 40 children to complete",
    )
    for parent in parents:
        _check_parent(client, database, parent)
    # Each child's step ran once (one start, one done), spread over the processes.
    per_child = database.query(
        "SELECT l.run_id, count(*) FILTER (WHERE phase = 'start'), "
        "count(*) FILTER (WHERE phase = 'done') FROM step_log l "
        f"JOIN {RUNS} r ON r.id = l.run_id WHERE l.name = 'square' GROUP BY l.run_id"
    )
    assert len(per_child) == 3 * COUNT and {(s, d) for _, s, d in per_child} == {(1, 1)}
    pids = {
        pid for (pid,) in database.query("SELECT DISTINCT pid FROM step_log WHERE name = 'square'")
    }
    assert len(pids) >= 2
    # A child ran on another process than the one that ran its parent's last step.
    crossed = database.scalar(
        "SELECT count(*) FROM step_log c JOIN squidmesh.squidmesh_runs r ON r.id = c.run_id "
        "JOIN step_log p ON p.run_id = r.parent_run_id AND p.name = 'total' "
        "WHERE c.name = 'square' AND c.phase = 'done' AND p.phase = 'done' AND c.pid <> p.pid"
    )
    assert crossed > 0
    workers.stop_all()


def test_a_fan_out_survives_a_worker_killed_midway(
    database: Database, workers: Workers, mesh_on
) -> None:
    victim = workers.start("--no-scheduler", concurrency=4)
    survivor = workers.start("--no-scheduler", concurrency=4)
    victim.wait_started()
    survivor.wait_started()
    client = mesh_on()
    parent = str(client.start_run("fan_parent", {"count": COUNT, "limit": LIMIT}).id)
    done_children = f"SELECT count(*) FROM {RUNS} WHERE parent_run_id = %s AND status = 'completed'"
    wait_for(lambda: database.scalar(done_children, (parent,)) >= 10, 60, "10 children done")
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    wait_for(lambda: client.inspect_run(parent).status.is_terminal, 90, "the fan-out to complete")
    _check_parent(client, database, parent)
    # Every child's step ran to its end at least once (steps are at-least-once: one the
    # kill interrupted after its work ran again), and every child run completed once.
    done = database.query(
        "SELECT l.run_id, count(*) FROM step_log l "
        f"JOIN {RUNS} r ON r.id = l.run_id AND r.parent_run_id = %s "
        "WHERE l.name = 'square' AND l.phase = 'done' GROUP BY l.run_id",
        (parent,),
    )
    assert len(done) == COUNT and min(n for _, n in done) >= 1
    workers.stop_all()
