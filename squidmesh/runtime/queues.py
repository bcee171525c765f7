"""What the flow-control queues hold right now: ``Mesh.queues()``, ``squidmesh queues``.

Counts come from the jobs table (``Transaction.queue_stats``): a job of a queue is
running while leased (the slot it holds), waiting while due and unclaimed. Limits are
those declared in this process (``sm.Queue``); a queue with jobs that this process does
not declare shows its counts with no limits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from squidmesh.core.flow import Queue
from squidmesh.storage.base import Transaction

__all__ = ["KeyState", "QueueState", "queue_states"]


@dataclasses.dataclass(frozen=True)
class KeyState:
    """The jobs of one key of a queue (``key`` None: calls without a key)."""

    key: str | None
    running: int
    waiting: int


@dataclasses.dataclass(frozen=True)
class QueueState:
    """One queue: its jobs running and waiting, its limits, per key."""

    name: str
    running: int
    waiting: int
    concurrency: int | None = None
    key_concurrency: int | None = None
    #: ``{"limit": n, "per": seconds}`` or None
    rate: dict[str, float] | None = None
    #: attempts started within the rate window (None without a rate)
    started_in_window: int | None = None
    declared: bool = True
    keys: tuple[KeyState, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["keys"] = [dataclasses.asdict(k) for k in self.keys]
        return data


def queue_states(tx: Transaction, now: datetime, declared: Mapping[str, Queue]) -> list[QueueState]:
    """Every declared queue and every queue with jobs, by name."""
    by_queue: dict[str, list[KeyState]] = {name: [] for name in declared}
    for name, key, running, waiting in tx.queue_stats(now):
        by_queue.setdefault(name, []).append(KeyState(key, running, waiting))
    states = []
    for name in sorted(by_queue):
        keys: Sequence[KeyState] = sorted(by_queue[name], key=lambda k: k.key or "")
        queue = declared.get(name)
        rate = queue.rate if queue is not None else None
        started = (
            tx.queue_starts(name, now - timedelta(seconds=rate.per)) if rate is not None else None
        )
        states.append(
            QueueState(
                name=name,
                running=sum(k.running for k in keys),
                waiting=sum(k.waiting for k in keys),
                concurrency=queue.concurrency if queue is not None else None,
                key_concurrency=queue.key_concurrency if queue is not None else None,
                rate={"limit": rate.limit, "per": rate.per} if rate is not None else None,
                started_in_window=started,
                declared=queue is not None,
                keys=tuple(keys),
            )
        )
    return states
