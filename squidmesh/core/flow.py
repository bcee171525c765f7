"""Flow control: queues with global and per-key concurrency, rate limits, debounce.

Pure values: ``Queue``, ``Rate`` and ``Debounce`` are frozen and validated when built
(a bad limit is a ``DefinitionError`` at import time, not a surprise in production).
The limits are enforced where jobs are claimed (``Transaction.claim_jobs`` with
``queues=``), across every worker process sharing the database.

A queued step's jobs carry ``{"queue", "flow_key", "priority"}`` in ``Job.data``
(``flow_data``); the stores read those fields to count slots and order waiting work.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from squidmesh.errors import DefinitionError, InvalidArgumentError

__all__ = [
    "DEADLINE_EXCEEDED",
    "Debounce",
    "Queue",
    "Rate",
    "deadline_job_data",
    "debounce_job_data",
    "debounced_start",
    "declared_queues",
    "flow_data",
    "holds_slot",
    "job_deadline",
    "key_text",
    "priority_value",
    "run_flow_data",
    "start_times",
]


def _positive_int(value: Any, what: str, *, error: type[Exception] = DefinitionError) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise error(f"{what} must be a positive integer, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Rate:
    """At most ``limit`` attempts start per ``per`` seconds (a window all workers share)."""

    limit: int
    per: float = 1.0

    def __post_init__(self) -> None:
        _positive_int(self.limit, "sm.Rate limit")
        if isinstance(self.per, bool) or not isinstance(self.per, (int, float)) or self.per <= 0:
            raise DefinitionError(f"sm.Rate per must be > 0 seconds, got {self.per!r}")
        object.__setattr__(self, "per", float(self.per))


@dataclasses.dataclass(frozen=True)
class Queue:
    """A named limit shared by every step (or workflow) declared with ``queue=`` it.

    ``concurrency``: at most this many attempts of the queue run at once;
    ``key_concurrency``: at most this many per key; ``rate``: at most ``rate.limit``
    attempts start per ``rate.per`` seconds. None means no such limit.
    """

    name: str
    concurrency: int | None = None
    key_concurrency: int | None = None
    rate: Rate | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 200:
            raise DefinitionError(
                f"sm.Queue name must be a non-empty string of at most 200 characters, "
                f"got {self.name!r}"
            )
        if self.concurrency is not None:
            _positive_int(self.concurrency, f"sm.Queue({self.name!r}) concurrency")
        if self.key_concurrency is not None:
            _positive_int(self.key_concurrency, f"sm.Queue({self.name!r}) key_concurrency")
        if self.rate is not None and not isinstance(self.rate, Rate):
            raise DefinitionError(
                f"sm.Queue({self.name!r}) rate must be sm.Rate(limit, per=seconds), "
                f"got {self.rate!r}"
            )
        _declare(self)


@dataclasses.dataclass(frozen=True)
class Debounce:
    """``start_run(..., debounce=sm.Debounce(key, seconds, max_wait=None))``."""

    key: str
    seconds: float
    max_wait: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise InvalidArgumentError(
                f"sm.Debounce needs a key (a non-empty string), got {self.key!r}"
            )
        for what, value in (("seconds", self.seconds), ("max_wait", self.max_wait)):
            if value is None and what == "max_wait":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InvalidArgumentError(f"sm.Debounce {what} must be > 0, got {value!r}")


#: every queue declared in this process, by name (single dict operations: no lock needed)
_declared: dict[str, Queue] = {}


def _declare(queue: Queue) -> None:
    # The last declaration of a name wins (a module reloaded with new limits).
    _declared[queue.name] = queue


def declared_queues() -> dict[str, Queue]:
    """Every queue declared in this process so far, by name."""
    return dict(_declared)


def key_text(value: Any, *, where: str) -> str | None:
    """The canonical text of a flow key (compact JSON, sorted keys); None for None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"{where}: the key must be a string or JSON (str, int, float, bool, list, dict), "
            f"got {type(value).__name__} {value!r}: {exc}"
        ) from None


def priority_value(value: Any, *, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**31 - 1:
        raise InvalidArgumentError(f"{where}: priority must be an int (32-bit), got {value!r}")
    return value


def flow_data(
    queue: Queue | None,
    key: Any,
    key_fn: Callable[..., Any] | None,
    priority: int,
    arguments: Mapping[str, Any],
    *,
    where: str,
) -> dict[str, Any] | None:
    """What a queued call's jobs carry in ``Job.data``; None when it has no queue."""
    if queue is None:
        return None
    if key is None and key_fn is not None:
        try:
            key = key_fn(**arguments)
        except Exception as exc:
            raise DefinitionError(
                f"{where}: the key function {getattr(key_fn, '__qualname__', key_fn)!r} "
                f"raised {type(exc).__name__}: {exc}; it is called with the step's "
                "arguments as keywords and must return a string or JSON value"
            ) from exc
    try:
        text = key_text(key, where=where)
    except InvalidArgumentError as exc:
        raise DefinitionError(exc.message) from None
    return {"queue": queue.name, "flow_key": text, "priority": priority}


#: the cancel reason (and explain reason) of a run cancelled at its deadline
DEADLINE_EXCEEDED = "deadline_exceeded"


def deadline_job_data(deadline: datetime) -> dict[str, Any]:
    """The data of the activation job that fires at a run's deadline."""
    return {"deadline": deadline.isoformat()}


def job_deadline(data: Mapping[str, Any] | None) -> str | None:
    """The deadline an activation job fires for (ISO 8601), or None for a plain one."""
    found = (data or {}).get("deadline")
    return found if isinstance(found, str) else None


def with_start_at(data: Mapping[str, Any] | None, start: datetime) -> dict[str, Any]:
    """The data of a first activation that was asked to start at ``start`` (``delay=``,
    ``start_at=``, a debounce window): the job's ``run_at`` alone cannot say so, since a
    worker that gives the job back after an error moves it later too."""
    return {**(data or {}), "start_at": start.isoformat()}


def job_start_at(data: Mapping[str, Any] | None) -> str | None:
    """The start an activation job was asked to wait for (ISO 8601), or None."""
    found = (data or {}).get("start_at")
    return found if isinstance(found, str) else None


def _aware(value: Any, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidArgumentError(
            f"start_run: {what} must be a timezone-aware datetime "
            f"(e.g. datetime.now(timezone.utc)), got {value!r}"
        )
    return value


def start_times(
    now: datetime,
    *,
    start_at: Any = None,
    delay: Any = None,
    deadline: Any = None,
    timeout: float | None = None,
) -> tuple[datetime | None, datetime | None]:
    """(when the run starts, its deadline) from ``start_run``'s arguments and the
    workflow's ``timeout``; ``InvalidArgumentError`` naming what to fix (nothing is
    persisted). The timeout counts from the start."""
    if start_at is not None and delay is not None:
        raise InvalidArgumentError("start_run: give start_at= or delay=, not both")
    begin: datetime | None = None
    if start_at is not None:
        begin = _aware(start_at, "start_at")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise InvalidArgumentError(f"start_run: delay must be >= 0 seconds, got {delay!r}")
        begin = now + timedelta(seconds=float(delay))
    end: datetime | None = None
    if deadline is not None:
        end = _aware(deadline, "deadline")
    elif timeout is not None:
        end = max(begin or now, now) + timedelta(seconds=timeout)
    if end is not None and end <= max(begin or now, now):
        raise InvalidArgumentError(
            f"start_run: the deadline {end.isoformat()} is not after the start "
            f"{max(begin or now, now).isoformat()}"
        )
    return begin, end


def run_flow_data(queue: Queue | None, key: Any, priority: Any) -> dict[str, Any] | None:
    """The data of a run's first activation when its workflow has a queue: the job that
    claims the run's slot and then holds it while the run is active (``holds_slot``)."""
    where = "start_run"
    if queue is None:
        if key is not None or (priority not in (None, 0)):
            raise InvalidArgumentError(
                "start_run: key= and priority= need a workflow declared with "
                "@sm.workflow(queue=sm.Queue(...))"
            )
        return None
    text = key_text(key, where=where)
    level = priority_value(0 if priority is None else priority, where=where)
    return {"queue": queue.name, "flow_key": text, "priority": level, "hold": True}


def holds_slot(data: Mapping[str, Any] | None) -> bool:
    """Whether an activation job is a run's admission to a workflow-level queue."""
    return bool((data or {}).get("hold")) and isinstance((data or {}).get("queue"), str)


def debounce_job_data(marker: str, debounce: Debounce, now: datetime) -> dict[str, Any]:
    """The data of a debounced run's first activation: ``flow_key`` holds the marker (the
    jobs table's generated column finds it), ``first_at`` bounds the wait (max_wait)."""
    return {
        "debounce": marker,
        "flow_key": marker,
        "debounce_key": debounce.key,
        "first_at": now.isoformat(),
        "max_wait": debounce.max_wait,
    }


def debounced_start(data: Mapping[str, Any], seconds: float, now: datetime) -> datetime:
    """When a debounced run starts after another start in its window: the window's end,
    never later than ``first_at + max_wait``."""
    start = now + timedelta(seconds=seconds)
    max_wait = data.get("max_wait")
    if isinstance(max_wait, (int, float)):
        start = min(
            start, datetime.fromisoformat(str(data["first_at"])) + timedelta(seconds=max_wait)
        )
    return max(start, now)
