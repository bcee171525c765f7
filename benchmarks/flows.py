"""The workflows the benchmarks run. Module level, so step references resolve by import."""

from __future__ import annotations

import threading
import time
from typing import Any

from pydantic import BaseModel

import squidmesh as sm

__all__ = ["PROBE", "Probe", "Steps", "approval_flow", "noop", "sequence"]


class Probe:
    """What steps report back to the benchmark thread: when a marked step started, and
    how many runs reached their last step. Thread-safe; reset between measurements."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.marks: dict[tuple[str, str], float] = {}
        self.last_steps = 0

    def reset(self) -> None:
        with self._lock:
            self.marks.clear()
            self.last_steps = 0

    def mark(self, run_id: str, name: str) -> None:
        at = time.perf_counter()
        with self._cond:
            self.marks[(run_id, name)] = at
            self._cond.notify_all()

    def last(self) -> None:
        with self._cond:
            self.last_steps += 1
            self._cond.notify_all()

    def wait_mark(self, run_id: str, name: str, timeout: float) -> float | None:
        with self._cond:
            self._cond.wait_for(lambda: (run_id, name) in self.marks, timeout)
            return self.marks.get((run_id, name))

    def wait_last(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.last_steps >= count, timeout)


PROBE = Probe()


@sm.step
def noop(i: int, last: bool = False) -> int:
    """The trivial step: returns its input (and tells the probe when it is the last)."""
    if last:
        PROBE.last()
    return i


class Steps(BaseModel):
    steps: int


class Nothing(BaseModel):
    pass


@sm.workflow(triggers=[sm.manual("manual", payload=Steps)])
def sequence(payload: Steps) -> Any:
    """``payload.steps`` trivial steps, one after another."""
    n = payload.steps
    total = 0
    for i in range(n):
        total += yield noop(i, last=i == n - 1)
    return total


@sm.step
def mark(tag: str) -> str:
    """Records when it started (``perf_counter``, same process as the caller)."""
    PROBE.mark(sm.step_context().run_id, tag)
    return tag


@sm.workflow(triggers=[sm.manual("manual", payload=Nothing)])
def approval_flow(payload: Any) -> Any:
    """A step, an approval, a step: for start/approve-to-step latency."""
    yield mark("first")
    decision = yield sm.approval("go")
    yield mark("after")
    return bool(decision.approved)
