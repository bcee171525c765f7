"""The Muster of Rohan: a capped fan-out over child runs.

Théoden calls a thousand riders to Edoras. Each rider is a child run of the muster
(``muster_rider``: saddle a horse, ride to Edoras), so a rider's steps, retries and
failures live in the rider's own short history, not in one giant history of the muster.
``sm.join(..., limit=20)`` keeps at most twenty riders on the road at once (the stables
of Edoras hold twenty horses): the first twenty start together, and each time one
arrives the next in line sets out, in order. The results come back in the order the
riders were called. Meanwhile the muster publishes its progress (``sm.publish``) for
operators: ``mesh.get_published(run_id)``, ``squidmesh runs show``, the console.

Run it (a throwaway SQLite file unless ``--database-url`` says otherwise)::

    python -m examples.muster --riders 1000 --limit 20 --threads 4

Measured on the development machine (2 cores shared with other work, load average about
2.5; PostgreSQL 15 on localhost, SQLite in WAL mode), 1,000 riders with ``limit=20``, the
worker threads in the same process as the command:

===========================  ==================  ==================
figure                       PostgreSQL 15       SQLite
===========================  ==================  ==================
wall time, 4 worker threads  16.3 s, 18.3 s      6.5 s, 7.6 s
wall time, 1 worker thread   9.5 s               6.3 s
riders per second            55 to 105           130 to 160
most riders in flight        20                  20
muster history               1,004 entries       1,004 entries
one rider's history          2 entries           2 entries
history rows, all runs       3,004               3,004
===========================  ==================  ==================

Each rider costs about four transactions (the muster's activation that settles the
rider before it and starts it, the rider's activation, its two steps), so on PostgreSQL
the figure is bound by commits. More threads do not help here: every finished rider
wakes the muster, and the muster's changes are serialized by its row lock, so extra
threads mostly wait for it (one worker thread is the fastest setting for one big
fan-out; many fan-outs at once spread over threads and processes).

The muster's history holds one entry per rider (its ``sm.child`` branch, resolved with
the rider's result) plus the join, two publications and the final count; each rider
holds its own two steps. A fan-out over child runs costs the parent one small entry per
item however much work each item does. ``tests/examples/test_muster.py`` runs a smaller
muster on SQLite and checks the same figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Generator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

import squidmesh as sm


class Rider(BaseModel):
    """One rider called to the muster."""

    number: int


class Muster(BaseModel):
    riders: int = 1000
    limit: int = 20


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.exponential(min=1, max=10)))
def saddle_horse(number: int) -> str:
    # A real muster would book a horse here (a flaky stable is retried with backoff).
    return f"horse-{number}"


@sm.step
def ride_to_edoras(number: int, horse: str) -> int:
    """Rides in; returns the spears the rider brings."""
    return 1 + number % 3


@sm.workflow(name="muster_rider", triggers=[sm.manual(payload=Rider)])
def muster_rider(rider: Rider) -> Generator[Any, Any, int]:
    horse = yield from saddle_horse(rider.number)
    return (yield from ride_to_edoras(rider.number, horse))


@sm.step
def count_the_host(riders: int, spears: int) -> str:
    return f"{riders} riders and {spears} spears stand at Edoras"


@sm.workflow(name="muster_of_rohan", triggers=[sm.manual(payload=Muster)])
def muster_of_rohan(muster: Muster) -> Generator[Any, Any, str]:
    yield sm.publish("muster", {"called": muster.riders, "on_the_road_at_most": muster.limit})
    spears = yield from sm.join(
        *[sm.child(muster_rider, {"number": n}) for n in range(muster.riders)],
        limit=muster.limit,
    )
    yield sm.publish("muster", {"called": muster.riders, "arrived": len(spears)})
    return (yield from count_the_host(len(spears), sum(spears)))


WORKFLOWS = [muster_of_rohan, muster_rider]


class Figures(NamedTuple):
    """What one muster measured (the table in this module's docstring)."""

    run_id: str
    status: str
    result: Any
    seconds: float
    riders_completed: int
    most_in_flight: int
    muster_entries: int
    rider_entries: tuple[int, ...]

    @property
    def history_rows(self) -> int:
        return self.muster_entries + sum(self.rider_entries)


def most_in_flight(entries: Sequence[sm.StepRun]) -> int:
    """The most child branches started and not yet settled at one instant, from the
    parent's recorded history (a slot freed and taken in one change counts once)."""
    points = []
    for entry in entries:
        if entry.kind == "child" and entry.started_at and entry.completed_at:
            points.append((datetime.fromisoformat(entry.started_at), 1))
            points.append((datetime.fromisoformat(entry.completed_at), -1))
    most = current = 0
    for _, step in sorted(points):
        current += step
        most = max(most, current)
    return most


def call_the_muster(mesh: sm.Mesh, *, riders: int, limit: int, timeout: float = 600.0) -> Figures:
    """Start a muster on ``mesh`` (whose workers run it) and wait for it to end."""
    started = time.monotonic()
    run = mesh.start_run(muster_of_rohan, {"riders": riders, "limit": limit})
    while not mesh.inspect_run(run.id).status.is_terminal:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the muster {run.id} did not end within {timeout}s")
        time.sleep(0.05)
    seconds = time.monotonic() - started
    done = mesh.inspect_run(run.id, include_history=True)
    children = done.children or ()
    rider_entries = tuple(
        len(mesh.inspect_run(c.run_id, include_history=True).step_runs or ()) for c in children
    )
    return Figures(
        run_id=str(run.id),
        status=done.status.value,
        result=done.result,
        seconds=seconds,
        riders_completed=sum(1 for c in children if c.status == "completed"),
        most_in_flight=most_in_flight(done.step_runs or ()),
        muster_entries=len(done.step_runs or ()),
        rider_entries=rider_entries,
    )


def main(argv: Sequence[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--riders", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4, help="worker threads in this process")
    parser.add_argument("--database-url", help="default: a throwaway SQLite file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        url = args.database_url or f"sqlite:///{Path(scratch) / 'muster.db'}"
        with sm.Mesh(url, workflows=WORKFLOWS) as mesh:
            mesh.migrate()
            mesh.worker(concurrency=args.threads, scheduler=False)
            figures = call_the_muster(mesh, riders=args.riders, limit=args.limit)
    riders = figures.rider_entries
    print(f"muster {figures.run_id}: {figures.status}: {figures.result}")
    print(f"wall time              {figures.seconds:.1f} s")
    print(f"riders per second      {figures.riders_completed / figures.seconds:.0f}")
    print(f"most riders in flight  {figures.most_in_flight} (limit {args.limit})")
    print(f"muster history         {figures.muster_entries} entries")
    print(f"one rider's history    {min(riders, default=0)}-{max(riders, default=0)} entries")
    print(f"history rows, all runs {figures.history_rows}")
    return figures


if __name__ == "__main__":
    main()
