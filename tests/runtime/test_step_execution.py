from __future__ import annotations

# How step bodies run (squidmesh/runtime/invoke.py, attempts.py), in one process:
# - no two attempts of one step ever run at the same time: a retry of a timed-out sync
#   attempt waits until that body has returned, and the overrun is recorded;
# - async steps are cancelled on timeout, and all run on one persistent event loop;
# - step_context().heartbeat(details) is recorded and shown by explain_run;
# - heartbeat_timeout: an attempt silent for longer is declared lost and retried.
import asyncio
import threading
import time
from typing import Any

import pytest

import squidmesh as sm
from tests.runtime.support import MeshFactory
from tests.support.waiting import wait_for

_lock = threading.Lock()
STATE: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    STATE.clear()
    STATE.update(active=0, peak=0, calls=0, loops=[], release=threading.Event())


def _enter() -> int:
    with _lock:
        STATE["active"] += 1
        STATE["calls"] += 1
        STATE["peak"] = max(STATE["peak"], STATE["active"])
        return int(STATE["calls"])


def _leave() -> None:
    with _lock:
        STATE["active"] -= 1


@sm.step(timeout=0.3, retry=sm.Retry(max_attempts=3))
def overruns() -> str:
    call = _enter()
    try:
        if call == 1:
            time.sleep(1.0)  # the work itself: it takes longer than the timeout allows
        return f"call {call}"
    finally:
        _leave()


@sm.workflow
def overrunning() -> Any:
    return (yield overruns())


def test_a_retry_waits_for_the_timed_out_body_and_the_overrun_is_recorded(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([overrunning])
    run = mesh.start_run(overrunning)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.status == "completed" and done.result == "call 2"
    assert STATE["peak"] == 1  # never two bodies of the step at once
    assert done.step_runs is not None
    first, second = done.step_runs[0].attempts
    assert (first.status, second.status) == ("failed", "completed")
    assert first.error is not None
    assert first.error["type"] == "squidmesh.runtime.invoke.StepTimeoutError"
    assert first.error["details"]["overran_by_seconds"] > 0


@sm.step(timeout=0.2)
async def hangs() -> str:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        STATE["cancelled"] = True
        raise
    return "never"


@sm.workflow
def hanging() -> Any:
    try:
        return (yield hangs())
    except sm.StepFailed as failed:
        return failed.error_type


def test_an_async_step_is_cancelled_on_timeout(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([hanging])
    run = mesh.start_run(hanging)
    assert mesh.inspect_run(run.id).result == "squidmesh.runtime.invoke.StepTimeoutError"
    assert STATE.get("cancelled") is True  # its coroutine did not run on


@sm.step
async def opens_client() -> int:
    # A loop-bound object, as an async HTTP session or a connection pool would be.
    STATE["client"] = asyncio.Queue()
    STATE["loops"].append(id(asyncio.get_running_loop()))
    return len(STATE["loops"])


@sm.step
async def uses_client() -> int:
    queue: asyncio.Queue[int] = STATE["client"]
    await queue.put(1)  # fails on another loop than the one it was made on
    STATE["loops"].append(id(asyncio.get_running_loop()))
    return await queue.get()


@sm.workflow
def async_steps() -> Any:
    yield opens_client()
    return (yield uses_client())


def test_async_steps_share_one_persistent_loop(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([async_steps])
    first = mesh.start_run(async_steps)
    second = mesh.start_run(async_steps)
    assert mesh.inspect_run(first.id).result == 1
    assert mesh.inspect_run(second.id).result == 1
    assert len(set(STATE["loops"])) == 1


@sm.step
def reports_progress() -> str:
    sm.step_context().heartbeat({"rows": 3})
    assert STATE["release"].wait(30)
    return "done"


@sm.workflow
def progressing() -> Any:
    return (yield reports_progress())


def _wait(predicate: Any, what: str, timeout: float = 20.0) -> Any:
    return wait_for(predicate, timeout, what)


def test_a_heartbeat_is_recorded_and_explained(mesh_factory: MeshFactory) -> None:
    mesh = mesh_factory([progressing], executor="database")
    run = mesh.start_run(progressing)
    drain = threading.Thread(target=mesh.drain)
    drain.start()
    try:
        why = _wait(
            lambda: (w := mesh.explain_run(run.id)).details.get("heartbeat") and w,
            "the heartbeat to be saved",
        )
        assert why.reason == "step_running"
        assert why.details["heartbeat"]["details"] == {"rows": 3}
        assert why.evidence["attempt"]["heartbeat"]["details"] == {"rows": 3}
    finally:
        STATE["release"].set()
        drain.join(30)
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.result == "done"
    assert done.step_runs is not None
    (attempt,) = done.step_runs[0].attempts
    assert attempt.status == "completed"
    assert attempt.heartbeat is not None and attempt.heartbeat["details"] == {"rows": 3}
    with mesh.store.transaction() as tx:  # its heartbeat wrote its row; its end updated it
        assert tx.load_attempts(str(run.id)) == {0: [attempt]}


@sm.step
def waits_for_release() -> str:
    assert STATE["release"].wait(30)
    return "done"


@sm.workflow
def released() -> Any:
    return (yield waits_for_release())


def test_a_first_attempt_that_succeeds_is_recorded_by_its_entry_alone(
    mesh_factory: MeshFactory,
) -> None:
    # A step's first attempt that succeeds without heartbeats writes no attempt row: its
    # entry records it, and every view shows it running, then completed, on its worker.
    mesh = mesh_factory([released], executor="database")
    run = mesh.start_run(released)
    drain = threading.Thread(target=mesh.drain)
    drain.start()
    try:
        why = _wait(
            lambda: (w := mesh.explain_run(run.id)).reason == "step_running" and w,
            "the step to run",
        )
        worker = why.details["worker"]
        assert isinstance(worker, str) and worker
        assert why.evidence["attempt"]["status"] == "running"
        running = mesh.inspect_run(run.id, include_history=True).step_runs
        assert running is not None
        (attempt,) = running[0].attempts
        assert (attempt.number, attempt.status, attempt.worker) == (1, "running", worker)
        assert attempt.started_at == running[0].started_at and attempt.finished_at is None
        with mesh.store.transaction() as tx:
            assert tx.load_attempts(str(run.id)) == {}
    finally:
        STATE["release"].set()
        drain.join(30)
    done = mesh.inspect_run(run.id, include_history=True).step_runs
    assert done is not None
    (ended,) = done[0].attempts
    assert (ended.number, ended.status, ended.worker) == (1, "completed", worker)
    assert ended.started_at == attempt.started_at
    assert ended.finished_at == done[0].completed_at is not None
    with mesh.store.transaction() as tx:
        assert tx.load_attempts(str(run.id)) == {}


@sm.workflow
def outraced() -> Any:
    return list((yield sm.first(waits_for_release(), sm.sleep(seconds=60))))


def test_an_attempt_that_returns_after_its_branch_lost_records_its_late_outcome(
    mesh_factory: MeshFactory,
) -> None:
    # The sleep wins while the step's first attempt runs: the branch is cancelled, and
    # the attempt, still shown running, records its outcome when it returns at last.
    mesh = mesh_factory([outraced], executor="database")
    run = mesh.start_run(outraced)
    drain = threading.Thread(target=mesh.drain)
    drain.start()
    try:
        _wait(lambda: (s := _step(mesh, run.id)) and s.status == "running", "the step to run")
        mesh_factory.clock.advance(61)
        mesh.drain()
        assert mesh.inspect_run(run.id).result == [1, None]
        lost = _step(mesh, run.id)
        assert lost is not None and lost.status == "cancelled"
        assert [(a.number, a.status) for a in lost.attempts] == [(1, "running")]
    finally:
        STATE["release"].set()
        drain.join(30)
    late = _step(mesh, run.id)
    assert late is not None and late.status == "cancelled"
    assert [(a.number, a.status) for a in late.attempts] == [(1, "completed")]


def _step(mesh: sm.Mesh, run_id: Any) -> sm.StepRun | None:
    runs = mesh.inspect_run(run_id, include_history=True).step_runs or ()
    return next((s for s in runs if s.name == "waits_for_release"), None)


@sm.step(heartbeat_timeout=0.5, retry=sm.Retry(max_attempts=2))
def goes_silent() -> str:
    call = _enter()
    try:
        sm.step_context().heartbeat()
        if call == 1:
            assert STATE["release"].wait(30)  # stuck, and silent
        return f"call {call}"
    finally:
        _leave()


@sm.workflow
def silent() -> Any:
    return (yield goes_silent())


def test_a_silent_attempt_is_declared_lost_and_retried_after_it_returns(
    mesh_factory: MeshFactory,
) -> None:
    mesh = mesh_factory([silent], executor="database")
    run = mesh.start_run(silent)
    worker = mesh.worker(concurrency=2, poll_interval=0.05)
    try:
        lost = _wait(
            lambda: [
                a
                for s in mesh.inspect_run(run.id, include_history=True).step_runs or ()
                for a in s.attempts
                if a.status == "failed"
            ],
            "attempt 1 to be declared lost",
        )
        assert lost[0].error is not None
        assert lost[0].error["type"] == "squidmesh.errors.HeartbeatTimeout"
        assert "heartbeat_timeout" in lost[0].error["message"]
        STATE["release"].set()
        _wait(lambda: mesh.inspect_run(run.id).status == "completed", "the retry to finish")
    finally:
        STATE["release"].set()
        worker.stop()
    done = mesh.inspect_run(run.id, include_history=True)
    assert done.result == "call 2"
    assert STATE["peak"] == 1  # the retry waited for the silent body to return
    assert done.step_runs is not None
    assert [a.status for a in done.step_runs[0].attempts] == ["failed", "completed"]
