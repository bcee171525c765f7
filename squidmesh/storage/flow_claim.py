"""Choosing which queued jobs a claim may take (flow control), shared by every store.

A store gathers, inside its claim (serialized across claimers: an advisory lock on
PostgreSQL, the write lock on SQLite, a mutex in memory), what the limits depend on:

- the jobs of each queue leased right now (a slot is a leased job whose lease has not
  expired: a killed worker's slot comes back when its lease runs out), per key;
- the attempt starts of each rate-limited queue within its window;
- the claimable jobs of the queues, at most ``limit`` per (queue, key), each key's
  best first (priority, then run_at, then id).

- when each key was last given a slot (``squidmesh_flow_keys``).

``plan`` then picks up to ``limit`` of them, one slot at a time: among the keys whose
queue has room (concurrency, key_concurrency, rate), the head with the highest priority,
then the key with the fewest jobs running, then the key served least recently (never
served first), then the oldest job. So keys take turns: a key with 10,000 waiting jobs
never starves a key with a few, whatever the limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from squidmesh.core.flow import Queue

__all__ = ["NO_KEY", "PRUNE_CHANCE", "PRUNE_SERVED_AFTER", "Waiting", "all_full", "plan"]

#: how the calls of no key appear in ``squidmesh_flow_keys`` (its key is never NULL)
NO_KEY = ""
#: keys not served for this long are forgotten (they rank as never served)
PRUNE_SERVED_AFTER = timedelta(days=1)
#: the share of SQL claims that also delete such keys (the memory store drops them at
#: every claim)
PRUNE_CHANCE = 0.01
_NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclasses.dataclass(frozen=True)
class Waiting:
    """A claimable job of a queue."""

    id: int
    queue: str
    key: str | None
    priority: int
    run_at: datetime


def plan(
    waiting: Iterable[Waiting],
    *,
    running: Mapping[tuple[str, str | None], int],
    starts: Mapping[str, int],
    served: Mapping[tuple[str, str | None], datetime],
    queues: Mapping[str, Queue],
    limit: int,
) -> list[Waiting]:
    """The jobs to take, in the order they were granted."""
    groups: dict[tuple[str, str | None], list[Waiting]] = {}
    for item in waiting:
        if item.queue in queues:
            groups.setdefault((item.queue, item.key), []).append(item)
    for items in groups.values():
        items.sort(key=lambda w: (-w.priority, w.run_at, w.id), reverse=True)  # pop() = best
    by_key = dict(running)
    by_queue: dict[str, int] = {}
    for (name, _), count in running.items():
        by_queue[name] = by_queue.get(name, 0) + count
    started = dict(starts)
    # (last served, order granted here): keys granted in this claim go to the back
    turns = {group: (at, 0) for group, at in served.items()}
    chosen: list[Waiting] = []
    while len(chosen) < limit:
        best: tuple[tuple[int, int, tuple[datetime, int], datetime, int], Any] | None = None
        for group, items in groups.items():
            if not items:
                continue
            queue = queues[group[0]]
            if queue.concurrency is not None and by_queue.get(queue.name, 0) >= queue.concurrency:
                continue
            if queue.key_concurrency is not None and by_key.get(group, 0) >= queue.key_concurrency:
                continue
            if queue.rate is not None and started.get(queue.name, 0) >= queue.rate.limit:
                continue
            head = items[-1]
            turn = turns.get(group, (_NEVER, 0))
            rank = (-head.priority, by_key.get(group, 0), turn, head.run_at, head.id)
            if best is None or rank < best[0]:
                best = (rank, group)
        if best is None:
            break
        group = best[1]
        taken = groups[group].pop()
        chosen.append(taken)
        turns[group] = (datetime.max.replace(tzinfo=timezone.utc), len(chosen))
        by_key[group] = by_key.get(group, 0) + 1
        by_queue[group[0]] = by_queue.get(group[0], 0) + 1
        started[group[0]] = started.get(group[0], 0) + 1
    return chosen


def all_full(queues: Mapping[str, Queue], running: Mapping[tuple[str, str | None], int]) -> bool:
    """Whether every queue has reached its ``concurrency`` (nothing can be taken)."""
    by_queue: dict[str, int] = {}
    for (name, _), count in running.items():
        by_queue[name] = by_queue.get(name, 0) + count
    return all(
        q.concurrency is not None and by_queue.get(name, 0) >= q.concurrency
        for name, q in queues.items()
    )
