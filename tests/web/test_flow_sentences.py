"""The console's sentences for the flow-control reasons of ``explain_run``."""

from __future__ import annotations

from typing import Any

import squidmesh as sm
from squidmesh.web.present import explanation_sentence


def _why(reason: str, status: str, step: str | None, **details: Any) -> sm.Explanation:
    return sm.Explanation(
        status=sm.RunStatus(status),
        reason=reason,
        step=step,
        details=details,
        next_actions=("cancel_run",),
        evidence={},
    )


def test_queue_position_and_limits_in_words() -> None:
    queued = _why(
        "queued",
        "pending",
        None,
        queue="customer-runs",
        key="acme",
        position=3,
        running=2,
        waiting=5,
        limit={"concurrency": 2, "key_concurrency": 1, "rate": None},
    )
    assert explanation_sentence(queued, "sync") == (
        "The run waits for queue customer-runs (key acme): a slot; position 3, 2 running, "
        "5 waiting; limits: concurrency 2, key concurrency 1."
    )
    limited = _why(
        "rate_limited",
        "running",
        "call_api",
        queue="api",
        key=None,
        running=0,
        waiting=1,
        limit={"concurrency": None, "key_concurrency": None, "rate": {"limit": 100, "per": 60}},
    )
    assert explanation_sentence(limited, "sync") == (
        "Step call_api waits for queue api: its rate window is full; 0 running, 1 waiting; "
        "limits: rate 100 per 60s."
    )
    assert explanation_sentence(
        _why("deadline_exceeded", "cancelled", None, deadline=None), "sync"
    ) == ("Cancelled at its deadline, no time set.")
