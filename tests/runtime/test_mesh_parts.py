from __future__ import annotations

# The parts ``Mesh`` is composed of (squidmesh/mesh.py) work on their own, built with
# nothing but what their constructors ask for: a RunClient and OperatorActions over an
# engine and a schema gate, a Runner to perform the jobs, an AsyncPool for coroutines.
# A part that still assumed something of a host Mesh would fail here, not only inside
# a Mesh that happens to provide it.
import asyncio
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

import squidmesh as sm
from squidmesh.async_api import AsyncPool
from squidmesh.client import RunClient
from squidmesh.operator import OperatorActions
from squidmesh.runtime.clock import local_now
from squidmesh.runtime.engine import Engine
from squidmesh.runtime.executors import DatabaseExecutor
from squidmesh.runtime.runner import Runner
from squidmesh.runtime.schema_gate import SchemaGate
from squidmesh.storage.memory import InMemoryStore


@sm.step
def shout(word: str) -> str:
    return word.upper()


class Word(BaseModel):
    word: str


@sm.workflow(triggers=[sm.manual(payload=Word)])
def reviewed(payload: Word) -> Any:
    loud = yield from shout(payload.word)
    decision = yield from sm.approval("review")
    return {"loud": loud, "approved": decision.approved, "by": decision.actor}


@dataclass
class Parts:
    engine: Engine
    runs: RunClient
    operator: OperatorActions
    runner: Runner


@pytest.fixture
def parts() -> Iterator[Parts]:
    store = InMemoryStore()
    engine = Engine(store, {reviewed.name: reviewed}, DatabaseExecutor(), local_now)
    gate = SchemaGate(store, auto_migrate=True)
    runs = RunClient(engine, gate=gate, telemetry=None, max_value_bytes=1_000)
    operator = OperatorActions(runs)
    runner = Runner(engine, fire_cron=runs.fire_cron, schedule=lambda stop: None)
    yield Parts(engine, runs, operator, runner)
    runner.close()
    engine.close()
    store.close()


def test_a_run_client_and_operator_actions_drive_a_run_without_a_mesh(parts: Parts) -> None:
    run = parts.runs.start_run(reviewed.name, {"word": "hi"}, actor="ada")
    assert run.status == "pending"
    parts.runner.drain(None)
    assert parts.runs.inspect_run(run.id).status == "paused"
    assert parts.runs.explain_run(run.id).reason == "paused_for_approval"

    # the workflow returns right after the decision: the approval's change completes it
    approved = parts.operator.approve_run(run.id, actor="grace", comment="fine")
    assert approved.status == "completed"
    done = parts.runs.inspect_run(run.id, include_history=True)
    assert done.status == "completed"
    assert done.result == {"loud": "HI", "approved": True, "by": "grace"}
    assert [r.id for r in parts.runs.list_runs(workflow=reviewed)] == [run.id]

    again = parts.operator.replay_run(run.id, actor="ada")
    assert again.id != run.id and again.status == "pending"
    assert parts.runs.count_runs(workflow=reviewed)["pending"] == 1


def test_the_parts_apply_the_limits_they_were_given(parts: Parts) -> None:
    with pytest.raises(sm.PayloadError, match="at most 1,000"):
        parts.runs.start_run(reviewed.name, {"word": "x" * 2_000})
    run = parts.runs.start_run(reviewed.name, {"word": "hi"})
    with pytest.raises(sm.ValueTooLargeError):
        parts.operator.send_event(run.id, "note", "x" * 2_000)
    with pytest.raises(sm.RunNotFoundError):
        parts.runs.inspect_run("not-a-run-id")


def test_an_async_pool_starts_threads_on_first_use_and_stops_them_on_close() -> None:
    pool = AsyncPool(2)
    assert pool.threads == 2 and pool.pool is None
    request: contextvars.ContextVar[str] = contextvars.ContextVar("request")

    def where(suffix: str) -> str:
        return f"{request.get()}{suffix} on {threading.current_thread().name}"

    async def call() -> str:
        request.set("r1")
        return await pool.run(where, "!")

    seen = asyncio.run(call())
    assert seen.startswith("r1! on squidmesh-async")
    assert pool.pool is not None
    pool.close()
    assert pool.pool is None
    with pytest.raises(sm.InvalidArgumentError, match="async_threads"):
        AsyncPool(0)
