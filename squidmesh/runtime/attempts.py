"""The step attempts running in this process, and their heartbeats.

``step_context().heartbeat(details)`` lands here: it costs a lock and an assignment in
the step's thread, never a database round trip. The process's presence thread
(``squidmesh.runtime.presence``) periodically saves the latest details of each attempt
(shown by ``explain_run``) and asks for attempts of steps declared with
``heartbeat_timeout`` that stayed silent longer than that: those are declared lost and
retried per policy while their body, which cannot be killed, runs on.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import datetime
from typing import Any

__all__ = ["RunningAttempt", "RunningAttempts"]


@dataclasses.dataclass(eq=False)
class RunningAttempt:
    """One attempt of one step call, from its start until its outcome is recorded."""

    run_id: str
    seq: int
    number: int
    step: str
    started_at: str
    worker: str | None
    heartbeat_timeout: float | None
    #: monotonic time of the start or of the latest heartbeat
    last_beat: float = dataclasses.field(default_factory=time.monotonic)
    #: the latest heartbeat as stored: {"at": ISO time, "details": ...}
    heartbeat: dict[str, Any] | None = None
    #: heartbeats received, and how many of them were saved
    beats: int = 0
    saved: int = 0
    #: set once the attempt was declared lost for its silence
    lost: bool = False


class RunningAttempts:
    """Thread-safe registry of the attempts running in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[RunningAttempt] = set()

    def start(self, attempt: RunningAttempt) -> RunningAttempt:
        with self._lock:
            self._running.add(attempt)
        return attempt

    def finish(self, attempt: RunningAttempt) -> None:
        with self._lock:
            self._running.discard(attempt)

    def beat(self, attempt: RunningAttempt, details: Any, at: datetime) -> None:
        with self._lock:
            attempt.last_beat = time.monotonic()
            attempt.heartbeat = {"at": at.isoformat(), "details": details}
            attempt.beats += 1

    def unsaved(self) -> list[tuple[RunningAttempt, dict[str, Any], int]]:
        """(attempt, heartbeat, beat count) of attempts with heartbeats not yet saved."""
        with self._lock:
            return [
                (a, a.heartbeat, a.beats)
                for a in self._running
                if a.heartbeat is not None and a.beats != a.saved and not a.lost
            ]

    def saved(self, attempt: RunningAttempt, beats: int) -> None:
        with self._lock:
            attempt.saved = max(attempt.saved, beats)

    def silent(self) -> list[RunningAttempt]:
        """Attempts silent for longer than their ``heartbeat_timeout``, marked lost."""
        now = time.monotonic()
        found = []
        with self._lock:
            for attempt in self._running:
                limit = attempt.heartbeat_timeout
                if limit is not None and not attempt.lost and now - attempt.last_beat > limit:
                    attempt.lost = True
                    found.append(attempt)
        return found

    def has(self, run_id: str, seq: int, number: int) -> bool:
        """Whether attempt ``number`` of the step at ``seq`` runs in this process."""
        with self._lock:
            return any(
                a.run_id == run_id and a.seq == seq and a.number == number for a in self._running
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._running)
