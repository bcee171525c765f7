"""Workflows of the Django tests (discovered like any app's ``workflows`` module).

Each ``transaction=True`` step writes a ``Ledger`` row with the ORM before it decides
how to end, so the table tells whether the write committed with the step or not.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from django.db import transaction
from pydantic import BaseModel

import squidmesh as sm
from tests.contrib.djangoapp.models import Ledger


def _write(key: str) -> Ledger:
    ctx = sm.step_context()
    return Ledger.objects.create(key=key, run_id=ctx.run_id, attempt=ctx.attempt)


@sm.step(transaction=True)
def write_then_fail(key: str) -> None:
    _write(key)
    with transaction.atomic():  # the step's own atomic block: a savepoint, not a commit
        _write(f"{key}-inner")
    raise sm.NonRetryable("refused after writing")


@sm.step(transaction=True, retry=sm.Retry(max_attempts=3))
def write_then_retry(key: str) -> int:
    row = _write(key)  # the same key each attempt: a leaked row would break the next
    if row.attempt < 3:
        raise ConnectionError(f"attempt {row.attempt} lost the connection after writing")
    return row.attempt


@sm.step(transaction=True, retry=sm.Retry(max_attempts=5))
def write_then_block(key: str, marker: str) -> int:
    """Writes, notes that it did (a file the test reads), and on the first visit waits
    forever: the test kills the worker process there, inside the open transaction."""
    row = _write(key)
    path = Path(marker)
    first = not path.exists()
    with path.open("a") as out:
        out.write(f"{os.getpid()} attempt {row.attempt}\n")
    deadline = time.monotonic() + 120
    while first and time.monotonic() < deadline:
        time.sleep(0.05)  # killed here
    return row.attempt


class Marker(BaseModel):
    marker: str


@sm.workflow
def failing_write() -> Any:
    try:
        yield from write_then_fail("failed")
    except sm.StepFailed:
        return "rolled back"
    return "unreachable"


@sm.workflow
def retried_write() -> Any:
    return (yield from write_then_retry("retried"))


@sm.workflow(triggers=[sm.manual(payload=Marker)])
def crashing_write(payload: Marker) -> Any:
    return (yield from write_then_block("crashed", payload.marker))


@sm.workflow
def gated() -> Any:
    decision = yield from sm.approval("sign_off")
    return "approved" if decision.approved else f"rejected by {decision.actor}"
