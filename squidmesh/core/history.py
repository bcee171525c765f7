"""The history of a run: one entry per yielded command, in yield order.

An entry is the durable record of a command: what was asked (kind, name, input), how it
ended (status, result or structured error) and when it resolved relative to the others
(``order``, a run-wide counter that join/first results and compensation follow on replay).
Attempts of a step are counted on the entry and stored apart; they never add positions.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterator, Mapping
from typing import Any

from squidmesh.core.records import Compensation, ErrorRecord
from squidmesh.types import EntryStatus

__all__ = ["HISTORY_FORMAT", "Entry", "History"]

HISTORY_FORMAT = 1
RESOLVED = frozenset({EntryStatus.COMPLETED.value, EntryStatus.FAILED.value})
_STATUSES = frozenset(s.value for s in EntryStatus)


@dataclasses.dataclass(slots=True)
class Entry:
    """One yielded command and its outcome. Plain JSON fields only: ``error`` is an
    ``ErrorRecord``'s JSON and ``compensation`` a ``Compensation``'s (read them with
    ``error_record`` and ``compensation_state``, write the compensation with
    ``set_compensation``)."""

    seq: int
    kind: str
    name: str
    status: str = EntryStatus.PENDING.value
    input: Any = None
    result: Any = None
    error: dict[str, Any] | None = None
    parent: int | None = None
    order: int | None = None
    attempts: int = 0
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    compensation: dict[str, Any] | None = None
    loc: str | None = None
    wake_at: str | None = None  # ISO: timer fire time, wait timeout, next retry
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None

    @property
    def resolved(self) -> bool:
        return self.status in RESOLVED

    @property
    def error_record(self) -> ErrorRecord | None:
        return ErrorRecord.from_json(self.error)

    @property
    def compensation_state(self) -> Compensation | None:
        return Compensation.from_json(self.compensation)

    def set_compensation(self, state: Compensation | None) -> None:
        self.compensation = state.to_json() if state is not None else None

    def label(self) -> str:
        where = f" at {self.loc}" if self.loc else ""
        return f"{self.kind} {self.name!r}{where}"

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        known = {f.name for f in dataclasses.fields(cls)}
        entry = cls(**{k: v for k, v in data.items() if k in known})
        if entry.status not in _STATUSES:
            raise ValueError(f"history entry {entry.seq} has unknown status {entry.status!r}")
        entry.meta = dict(entry.meta or {})
        return entry

    def copy(self) -> Entry:
        # Field by field through the constructor: ``dataclasses.replace`` costs four times
        # as much, and a replay copies every entry it feeds back.
        copied = Entry(*_ENTRY_VALUES(self))
        copied.meta = dict(self.meta)
        return copied


#: an entry's field values, in the order its constructor takes them
_ENTRY_VALUES = operator.attrgetter(*(f.name for f in dataclasses.fields(Entry)))


def _json(error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(error) if error is not None else None


class History:
    """The ordered entries of one run, plus what is needed to replay it in isolation.

    ``seq`` of an entry equals its index. ``resolve`` is the one way outcomes are
    written, so the resolution order stays consistent between the engine, the test
    interpreter and replay.
    """

    __slots__ = (
        "_next_order",
        "entries",
        "outcome",
        "payload",
        "result",
        "run_id",
        "schedule",
        "trigger",
        "workflow",
    )

    def __init__(
        self,
        entries: list[Entry] | None = None,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        trigger: str | None = None,
        payload: dict[str, Any] | None = None,
        schedule: dict[str, Any] | None = None,
        outcome: str | None = None,
        result: Any = None,
    ) -> None:
        self.entries: list[Entry] = list(entries or [])
        for index, entry in enumerate(self.entries):
            if entry.seq != index:
                raise ValueError(f"history entry at position {index} has seq {entry.seq}")
        self.run_id = run_id
        self.workflow = workflow
        self.trigger = trigger
        self.payload = dict(payload or {})
        self.schedule = schedule
        #: how the run ended ("completed", "failed", "cancelled") once it has; else None
        self.outcome = outcome
        self.result = result
        orders = [e.order for e in self.entries if e.order is not None]
        self._next_order = (max(orders) + 1) if orders else 0

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __getitem__(self, seq: int) -> Entry:
        return self.entries[seq]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, History):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"<History run={self.run_id} entries={len(self.entries)}>"

    def append(self, entry: Entry) -> Entry:
        if entry.seq != len(self.entries):
            raise ValueError(f"entry seq {entry.seq} does not follow seq {len(self.entries) - 1}")
        self.entries.append(entry)
        if entry.order is not None:
            self._next_order = max(self._next_order, entry.order + 1)
        return entry

    def take_order(self) -> int:
        order = self._next_order
        self._next_order += 1
        return order

    def resolve(
        self,
        seq: int,
        status: str,
        *,
        result: Any = None,
        error: ErrorRecord | Mapping[str, Any] | None = None,
        at: str | None = None,
    ) -> Entry:
        """Record the outcome of an entry; it takes the next resolution order. ``error``
        is an ``ErrorRecord``, or its JSON (as stored: kept as given)."""
        entry = self.entries[seq]
        if entry.resolved or entry.status == EntryStatus.CANCELLED.value:
            raise ValueError(f"entry {seq} ({entry.label()}) is already {entry.status}")
        entry.status = status
        entry.result = result
        entry.error = error.to_json() if isinstance(error, ErrorRecord) else _json(error)
        entry.order = self.take_order()
        entry.completed_at = at
        entry.wake_at = None
        return entry

    def branches(self, seq: int) -> list[Entry]:
        """The branch entries of the join/first at ``seq`` (they follow it directly)."""
        count = int((self.entries[seq].input or {}).get("branches", 0))
        return self.entries[seq + 1 : seq + 1 + count]

    def copy(self) -> History:
        return History(
            [e.copy() for e in self.entries],
            run_id=self.run_id,
            workflow=self.workflow,
            trigger=self.trigger,
            payload=dict(self.payload),
            schedule=self.schedule,
            outcome=self.outcome,
            result=self.result,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": HISTORY_FORMAT,
            "run_id": self.run_id,
            "workflow": self.workflow,
            "trigger": self.trigger,
            "payload": self.payload,
            "schedule": self.schedule,
            "outcome": self.outcome,
            "result": self.result,
            "entries": [e.to_json() for e in self.entries],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> History:
        fmt = data.get("format", HISTORY_FORMAT)
        if fmt != HISTORY_FORMAT:
            raise ValueError(
                f"unsupported history format {fmt!r} (this code reads {HISTORY_FORMAT})"
            )
        return cls(
            [Entry.from_json(e) for e in data.get("entries", [])],
            run_id=data.get("run_id"),
            workflow=data.get("workflow"),
            trigger=data.get("trigger"),
            payload=data.get("payload") or {},
            schedule=data.get("schedule"),
            outcome=data.get("outcome"),
            result=data.get("result"),
        )
