from __future__ import annotations

# Cron: the elected scheduler in real worker processes fires each tick exactly once,
# restarts do not re-fire, fire_cron is idempotent, catch-up policies and timezones
# (virtual clock on an in-memory Mesh).
import itertools
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.runtime import cron
from squidmesh.runtime.cron import LEADERSHIP, Scheduler, due_fire_times, next_fire_time
from squidmesh.storage.sessions import advisory_key
from tests.support.waiting import wait_for
from tests.worker import apps
from tests.worker.conftest import Database, Workers

UTC = timezone.utc
TICKS = "squidmesh.squidmesh_cron_ticks"
RUNS = "squidmesh.squidmesh_runs"


def _runs_per_tick(db: Database) -> dict[datetime, list[str]]:
    rows = db.query(f"SELECT schedule->>'fire_time', id FROM {RUNS} WHERE workflow = 'ticker'")
    found: dict[datetime, list[str]] = {}
    for fire_time, run_id in rows:
        found.setdefault(datetime.fromisoformat(fire_time), []).append(str(run_id))
    return found


def _assert_consecutive(times: list[datetime]) -> None:
    steps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
    assert steps <= {1.0}, f"ticks are not consecutive seconds: {times}"


def _advisory_locks(db: Database) -> int:
    """Holders of the scheduler's advisory lock (workers also hold one each, proving they
    are alive: those are not counted)."""
    return int(
        db.scalar(
            "WITH k AS (SELECT hashtext(%s)::bigint AS key) "
            "SELECT count(*) FROM pg_locks, k WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND objsubid = 1 AND classid::bigint = ((k.key >> 32) & 4294967295) "
            "AND objid::bigint = (k.key & 4294967295)",
            (advisory_key(LEADERSHIP, "squidmesh"),),
        )
    )


def test_three_schedulers_fire_each_tick_once_and_restarts_do_not_refire(
    database: Database, workers: Workers, mesh_on
) -> None:
    first = [workers.start(concurrency=2) for _ in range(3)]
    for proc in first:
        proc.wait_started()
    # One scheduler among three workers is elected (it holds the advisory lock) and fires.
    wait_for(lambda: _advisory_locks(database) == 1, 30, "a scheduler to be elected")
    wait_for(lambda: len(_runs_per_tick(database)) >= 3, 30, "three ticks to be fired")
    assert _advisory_locks(database) == 1
    workers.stop_all()
    assert [p.proc.returncode for p in first] == [0, 0, 0], workers.outputs()

    before = _runs_per_tick(database)
    assert len(before) >= 3, workers.outputs()
    assert {len(ids) for ids in before.values()} == {1}  # no tick fired twice
    times = sorted(before)
    _assert_consecutive(times)
    ticks = database.query(f"SELECT fire_time, run_id FROM {TICKS} WHERE workflow = 'ticker'")
    assert {t: [str(r)] for t, r in ticks} == before

    # Downtime, by the database's clock: no worker runs while at least two ticks fall due.
    missed_until = times[-1] + timedelta(seconds=2.5)
    wait_for(
        lambda: database.scalar("SELECT clock_timestamp() >= %s", (missed_until,)),
        30,
        "two ticks to be missed",
    )
    restarted_at: datetime = database.scalar("SELECT clock_timestamp()")
    missed = [times[-1] + timedelta(seconds=n) for n in (1, 2)]  # due before restarted_at
    second = [workers.start(concurrency=2) for _ in range(3)]
    for proc in second:
        proc.wait_started()
    wait_for(lambda: _advisory_locks(database) == 1, 30, "a scheduler to be elected again")
    # catchup="all": the missed ticks are fired, then the scheduler keeps up from now on.
    wait_for(lambda: max(_runs_per_tick(database)) > restarted_at, 30, "a tick after the restart")
    workers.stop_all()
    assert [p.proc.returncode for p in second] == [0, 0, 0], workers.outputs()

    after = _runs_per_tick(database)
    assert {len(ids) for ids in after.values()} == {1}
    # The ticks recorded before the restart kept their runs (nothing re-fired) ...
    assert {t: after[t] for t in before} == before
    # ... and catchup="all" filled the downtime: still one run per consecutive second.
    all_times = sorted(after)
    assert all_times[: len(times)] == times
    assert set(missed) <= set(all_times)
    _assert_consecutive(all_times)
    print(f"\n{len(times)} ticks before the restart, {len(all_times)} in all, none twice")

    # Finish every cron run here; each tick's step ran once and saw its own fire time.
    client = mesh_on()
    client.drain()
    statuses = Counter(str(s) for (s,) in database.query(f"SELECT status FROM {RUNS}"))
    assert statuses == {"completed": len(all_times)}
    notes = Counter(
        datetime.fromisoformat(n)
        for (n,) in database.query(
            "SELECT note FROM step_log WHERE name = 'tick' AND phase = 'done'"
        )
    )
    assert notes == dict.fromkeys(all_times, 1)
    for fire_time, (run_id,) in after.items():
        run = client.inspect_run(run_id)
        assert run.trigger == "every_second"
        assert run.schedule is not None and run.result == run.schedule
        assert datetime.fromisoformat(run.schedule["fire_time"]) == fire_time
        assert run.idempotency_key == run.schedule["signal_id"]


def test_fire_cron_twice_returns_the_same_run(database: Database, mesh_on) -> None:
    mesh = mesh_on()
    tick = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    first = mesh.fire_cron(apps.ticker, "every_second", tick)
    again = mesh.fire_cron("ticker", "every_second", tick)
    assert again.id == first.id
    # Another process (another Mesh) firing the same tick gets that run as well.
    assert mesh_on().fire_cron("ticker", "every_second", tick).id == first.id
    assert database.scalar(f"SELECT count(*) FROM {TICKS}") == 1
    assert database.scalar(f"SELECT count(*) FROM {RUNS}") == 1
    other = mesh.fire_cron("ticker", "every_second", tick + timedelta(seconds=1))
    assert other.id != first.id
    assert first.schedule == {
        "workflow": "ticker",
        "trigger": "every_second",
        "expression": "* * * * * *",
        "timezone": "UTC",
        "fire_time": tick.isoformat(),
        "signal_id": cron.signal_id("ticker", "every_second", tick),
    }


def test_concurrent_fire_cron_of_one_tick_yields_one_run(database: Database, mesh_on) -> None:
    meshes = [mesh_on() for _ in range(4)]
    tick = datetime(2030, 6, 1, 8, 30, 0, tzinfo=UTC)
    barrier = threading.Barrier(len(meshes))
    results: list[Any] = [None] * len(meshes)

    def fire(i: int) -> None:
        barrier.wait()
        try:
            results[i] = str(meshes[i].fire_cron("ticker", "every_second", tick).id)
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(len(meshes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(isinstance(r, str) for r in results), results
    assert len(set(results)) == 1
    assert database.scalar(f"SELECT count(*) FROM {RUNS}") == 1


# --------------------------------------------------------------------------- virtual clock


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@sm.step
def note_fire(fire_time: str) -> str:
    return fire_time


def _schedule_workflow(name: str, expr: str, catchup: Any, tz: str = "UTC") -> Any:
    def body(payload: Any) -> Any:
        schedule = sm.current_run().schedule
        assert schedule is not None
        yield note_fire(schedule["fire_time"])
        return schedule

    body.__name__ = name
    return sm.workflow(
        name=name, triggers=[sm.cron(expr, name="tick", timezone=tz, catchup=catchup)]
    )(body)


every_minute_latest = _schedule_workflow("every_minute_latest", "* * * * *", "latest")
every_minute_all = _schedule_workflow("every_minute_all", "* * * * *", "all")
every_minute_none = _schedule_workflow("every_minute_none", "* * * * *", "none")
nine_in_new_york = _schedule_workflow("nine_in_new_york", "0 9 * * *", "all", "America/New_York")
CATCHUP = {"latest": every_minute_latest, "all": every_minute_all, "none": every_minute_none}


def _trigger(workflow: Any) -> sm.CronTrigger:
    trig = workflow.triggers[0]
    assert isinstance(trig, sm.CronTrigger)
    return trig


def _fired(mesh: sm.Mesh, workflow: Any) -> list[str]:
    return sorted(
        (r.schedule or {})["fire_time"] for r in mesh.list_runs(workflow=workflow, limit=500)
    )


def test_due_fire_times_per_catchup_policy() -> None:
    started = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
    last = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    now = datetime(2024, 5, 1, 12, 10, 5, tzinfo=UTC)  # 10 ticks missed, the last 5 s ago
    ticks = [last + timedelta(minutes=i) for i in range(1, 11)]
    assert due_fire_times(_trigger(every_minute_all), last, now, started) == ticks
    assert due_fire_times(_trigger(every_minute_latest), last, now, started) == ticks[-1:]
    assert due_fire_times(_trigger(every_minute_none), last, now, started) == ticks[-1:]
    late = now + timedelta(seconds=40)  # the latest tick is now beyond the grace period
    assert due_fire_times(_trigger(every_minute_none), last, late, started) == []
    assert due_fire_times(_trigger(every_minute_latest), last, late, started) == ticks[-1:]
    # Never fired: nothing before the scheduler started counts as missed.
    assert due_fire_times(_trigger(every_minute_all), None, now, started) == ticks
    assert due_fire_times(_trigger(every_minute_all), None, started, started) == []
    # Nothing due between ticks, and a tick is due at its exact time.
    assert due_fire_times(_trigger(every_minute_all), ticks[-1], now, started) == []
    assert due_fire_times(_trigger(every_minute_all), ticks[-2], ticks[-1], started) == ticks[-1:]


@pytest.mark.parametrize("catchup", ["latest", "all", "none"])
def test_scheduler_fire_due_with_a_virtual_clock(catchup: str) -> None:
    workflow = CATCHUP[catchup]
    clock = Clock(datetime(2024, 5, 1, 11, 59, 30, tzinfo=UTC))
    with sm.Mesh("memory://", clock=clock, workflows=[workflow]) as mesh:
        scheduler = Scheduler(mesh)
        pairs = scheduler.triggers()
        assert [(wf.name, trig.name) for wf, trig in pairs] == [(workflow.name, "tick")]
        started = clock()
        assert scheduler.fire_due(pairs, started) == 0
        clock.advance(seconds=35)  # 12:00:05: the 12:00 tick is due
        assert scheduler.fire_due(pairs, started) == 1
        assert scheduler.fire_due(pairs, started) == 0  # same tick: nothing more
        assert _fired(mesh, workflow) == ["2024-05-01T12:00:00+00:00"]

        clock.advance(minutes=10)  # 12:10:05: ticks 12:01 .. 12:10 were missed
        fired = scheduler.fire_due(pairs, started)
        expected = {
            "latest": ["2024-05-01T12:10:00+00:00"],
            "all": [f"2024-05-01T12:{m:02d}:00+00:00" for m in range(1, 11)],
            "none": ["2024-05-01T12:10:00+00:00"],  # 5 s late: still "now"
        }[catchup]
        assert fired == len(expected)
        assert _fired(mesh, workflow) == ["2024-05-01T12:00:00+00:00", *expected]

        clock.advance(minutes=5, seconds=50)  # 12:15:55: 12:11 .. 12:15 missed, 55 s late
        fired = scheduler.fire_due(pairs, started)
        expected2 = {
            "latest": ["2024-05-01T12:15:00+00:00"],
            "all": [f"2024-05-01T12:{m:02d}:00+00:00" for m in range(11, 16)],
            "none": [],
        }[catchup]
        assert fired == len(expected2)
        assert _fired(mesh, workflow) == ["2024-05-01T12:00:00+00:00", *expected, *expected2]

        # A restarted scheduler (new baseline) does not re-fire recorded ticks.
        restarted = Scheduler(mesh)
        assert restarted.fire_due(restarted.triggers(), clock()) == 0
        assert len(_fired(mesh, workflow)) == 1 + len(expected) + len(expected2)
        assert mesh.drain() > 0
        assert {r.status for r in mesh.list_runs(workflow=workflow)} == {"completed"}


def test_current_run_schedule_and_explain_evidence() -> None:
    clock = Clock(datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC))
    with sm.Mesh("memory://", clock=clock, workflows=[every_minute_all]) as mesh:
        tick = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        run = mesh.fire_cron(every_minute_all, "tick", tick)
        mesh.drain()
        done = mesh.inspect_run(run.id, include_history=True)
        facts = {
            "workflow": "every_minute_all",
            "trigger": "tick",
            "expression": "* * * * *",
            "timezone": "UTC",
            "fire_time": "2024-05-01T12:00:00+00:00",
            "signal_id": "cron:every_minute_all:tick:2024-05-01T12:00:00+00:00",
        }
        assert done.status == "completed"
        assert done.result == facts  # what sm.current_run().schedule held in the workflow
        assert done.schedule == facts
        assert done.step_runs is not None
        assert done.step_runs[0].output == facts["fire_time"]
        assert mesh.explain_run(run.id).evidence["run"]["schedule"] == facts
        assert mesh.export_history(run.id)["schedule"] == facts
        assert mesh.fire_cron(every_minute_all, "tick", tick).id == run.id
        # Replays keep the schedule they were fired with.
        assert mesh.replay_run(run.id).schedule == facts


def test_fire_cron_rejects_bad_input() -> None:
    with sm.Mesh("memory://", workflows=[every_minute_all, apps.sequential]) as mesh:
        with pytest.raises(ValueError, match="timezone-aware"):
            mesh.fire_cron(every_minute_all, "tick", datetime(2024, 1, 1))
        with pytest.raises(sm.UnknownTriggerError):
            mesh.fire_cron(every_minute_all, "nope", datetime(2024, 1, 1, tzinfo=UTC))
        with pytest.raises(sm.UnknownTriggerError):
            mesh.fire_cron(apps.sequential, "manual", datetime(2024, 1, 1, tzinfo=UTC))
        with pytest.raises(sm.UnknownWorkflowError):
            mesh.fire_cron("ghost", "tick", datetime(2024, 1, 1, tzinfo=UTC))
        assert mesh.list_runs() == []


def test_timezone_fire_times_follow_daylight_saving() -> None:
    trig = _trigger(nine_in_new_york)
    winter = next_fire_time(trig, datetime(2024, 1, 10, 0, 0, tzinfo=UTC))
    summer = next_fire_time(trig, datetime(2024, 7, 10, 0, 0, tzinfo=UTC))
    assert winter == datetime(2024, 1, 10, 14, 0, tzinfo=UTC)  # EST, UTC-5
    assert summer == datetime(2024, 7, 10, 13, 0, tzinfo=UTC)  # EDT, UTC-4

    # Across the spring-forward night (2024-03-10) through the scheduler, catchup="all".
    clock = Clock(datetime(2024, 3, 8, 12, 0, tzinfo=UTC))
    with sm.Mesh("memory://", clock=clock, workflows=[nine_in_new_york]) as mesh:
        scheduler = Scheduler(mesh)
        started = clock()
        clock.now = datetime(2024, 3, 12, 0, 0, tzinfo=UTC)
        assert scheduler.fire_due(scheduler.triggers(), started) == 4
        assert _fired(mesh, nine_in_new_york) == [
            "2024-03-08T14:00:00+00:00",
            "2024-03-09T14:00:00+00:00",
            "2024-03-10T13:00:00+00:00",
            "2024-03-11T13:00:00+00:00",
        ]
        run = mesh.list_runs(workflow=nine_in_new_york, limit=1)[0]
        assert run.schedule is not None and run.schedule["timezone"] == "America/New_York"
        assert run.schedule["expression"] == "0 9 * * *"
