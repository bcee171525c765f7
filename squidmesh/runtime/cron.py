"""Cron: fire times, catch-up after downtime, and the elected scheduler loop.

Exactly one run starts per (workflow, trigger, fire time): ``fire_cron`` records the tick
in ``squidmesh_cron_ticks`` (unique on that triple) in the same transaction that creates
the run, so two schedulers, a restart or a host calling ``mesh.fire_cron`` for the same
tick all converge on one run. Only one worker schedules at a time (a PostgreSQL advisory
lock held on a dedicated connection); the unique tick is the safety net beneath it.
"""

from __future__ import annotations

import logging
import threading
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from croniter import croniter

from squidmesh.core.definition import CronTrigger, WorkflowDefinition
from squidmesh.storage.base import Store

__all__ = ["LEADERSHIP", "due_fire_times", "fire_times_between", "next_fire_time", "signal_id"]

log = logging.getLogger("squidmesh.cron")

#: the name of the scheduler's leadership lock (``Store.leadership``): one per schema
LEADERSHIP = "cron"
#: with catchup="none", a tick this late still counts as "now" rather than "missed"
NONE_GRACE = timedelta(seconds=30)
#: with catchup="all", at most this many missed ticks are started at once
ALL_LIMIT = 1000


def _tz(trigger: CronTrigger) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(trigger.timezone)


def next_fire_time(trigger: CronTrigger, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (aware, in UTC)."""
    local = after.astimezone(_tz(trigger))
    nxt: datetime = croniter(trigger.expr, local).get_next(datetime)
    return nxt.astimezone(timezone.utc)


def fire_times_between(
    trigger: CronTrigger, after: datetime, until: datetime, limit: int = ALL_LIMIT
) -> Iterator[datetime]:
    """Fire times in ``(after, until]``, oldest first, at most ``limit`` of them."""
    local = after.astimezone(_tz(trigger))
    it = croniter(trigger.expr, local)
    for _ in range(limit):
        nxt: datetime = it.get_next(datetime)
        moment = nxt.astimezone(timezone.utc)
        if moment > until:
            return
        yield moment


def due_fire_times(
    trigger: CronTrigger, last: datetime | None, now: datetime, started: datetime
) -> list[datetime]:
    """The ticks to fire now, per the trigger's ``catchup`` policy.

    ``last`` is the latest tick already fired (None if never); ``started`` is when this
    scheduler began, the baseline for a trigger that never fired (nothing before it
    counts as missed).
    """
    since = last if last is not None else started
    missed = list(fire_times_between(trigger, since, now))
    if not missed:
        return []
    if trigger.catchup == "all":
        return missed
    if trigger.catchup == "latest":
        return missed[-1:]
    return [t for t in missed if now - t <= NONE_GRACE][-1:]


def signal_id(workflow: str, trigger: str, fire_time: datetime) -> str:
    """A stable id for one tick, also the run's idempotency key."""
    return f"cron:{workflow}:{trigger}:{fire_time.astimezone(timezone.utc).isoformat()}"


def schedule_facts(
    workflow: WorkflowDefinition, trigger: CronTrigger, fire_time: datetime
) -> dict[str, Any]:
    """What ``sm.current_run().schedule`` holds for a cron run."""
    return {
        "workflow": workflow.name,
        "trigger": trigger.name,
        "expression": trigger.expr,
        "timezone": trigger.timezone,
        "fire_time": fire_time.astimezone(timezone.utc).isoformat(),
        "signal_id": signal_id(workflow.name, trigger.name, fire_time),
    }


class CronHost(Protocol):
    """What the scheduler uses of a Mesh."""

    @property
    def store(self) -> Store: ...

    @property
    def workflows(self) -> Mapping[str, WorkflowDefinition]: ...

    @property
    def clock(self) -> Callable[[], datetime]: ...

    def fire_cron(
        self, workflow: str | WorkflowDefinition, trigger: str, fire_time: datetime
    ) -> object: ...


class Scheduler:
    """Fires the cron triggers of a Mesh's workflows while it holds the leadership."""

    def __init__(self, mesh: CronHost, *, tick: float = 1.0) -> None:
        self.mesh = mesh
        self.tick = tick

    def triggers(self) -> list[tuple[WorkflowDefinition, CronTrigger]]:
        return [
            (wf, trig)
            for wf in self.mesh.workflows.values()
            for trig in wf.triggers
            if isinstance(trig, CronTrigger)
        ]

    def run(self, stop: threading.Event) -> None:
        pairs = self.triggers()
        if not pairs:
            return
        started = self.mesh.clock()
        while not stop.is_set():
            leader = self.mesh.store.leadership(LEADERSHIP)
            try:
                if not leader.acquire():
                    stop.wait(max(self.tick, 1.0) * 5)
                    continue
                log.info("scheduler elected for %d cron trigger(s)", len(pairs))
                while not stop.is_set() and leader.alive():
                    self.fire_due(pairs, started)
                    stop.wait(self._sleep_for(pairs))
            except Exception:
                log.exception("scheduler error; retrying")
                stop.wait(self.tick * 5)
            finally:
                leader.release()

    def fire_due(
        self, pairs: list[tuple[WorkflowDefinition, CronTrigger]], started: datetime
    ) -> int:
        fired = 0
        now = self.mesh.clock()
        for wf, trig in pairs:
            with self.mesh.store.transaction() as tx:
                last = tx.last_cron_tick(wf.name, trig.name)
            for fire_time in due_fire_times(trig, last, now, started):
                self.mesh.fire_cron(wf, trig.name, fire_time)
                fired += 1
        return fired

    def _sleep_for(self, pairs: list[tuple[WorkflowDefinition, CronTrigger]]) -> float:
        now = self.mesh.clock()
        soonest = min(next_fire_time(trig, now) for _, trig in pairs)
        wait: float = (soonest - now).total_seconds()
        return max(0.01, min(self.tick, wait))
