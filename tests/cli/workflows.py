"""Workflows the CLI tests run: the Ring Errand (examples/) and two that go wrong."""

from __future__ import annotations

from typing import Any

import squidmesh as sm
from examples.ring_errand import ring_errand


@sm.step
def fall_over(reason: str) -> str:
    raise RuntimeError(f"fell over: {reason}")


@sm.workflow
def doomed() -> Any:
    """Fails: its only step raises and has no retries."""
    return (yield fall_over("no retries"))


@sm.workflow
def buggy() -> Any:
    """Suspends: the workflow code itself raises after its first wait."""
    yield sm.wait_for_event("go")
    raise KeyError("a bug in the workflow code")


@sm.workflow
def listener() -> Any:
    """Waits for an event and returns its data."""
    data = yield sm.wait_for_event("ring_found")
    return {"got": data}


@sm.workflow
def risky() -> Any:
    """Fails right after its approval: its next step raises and has no retries."""
    yield sm.approval("go_ahead")
    return (yield fall_over("after the approval"))


@sm.workflow
def errand_boy() -> Any:
    """A child run: waits for its approval."""
    yield sm.approval("errand_ok")
    return "errand run"


@sm.workflow
def sender() -> Any:
    """Publishes its progress, then waits for its child run."""
    yield sm.publish("progress", {"sent": 1, "of": 1})
    return (yield sm.child(errand_boy))


WORKFLOWS = [ring_errand, doomed, buggy, listener, risky, errand_boy, sender]
