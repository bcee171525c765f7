"""The outbox itself, in-process on the memory store and SQLite, with a list as broker."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.contrib.outbox import OUTBOX_LEASE, Outbox, due_at, payload


class ListBroker(Outbox):
    """Accepts jobs into a list; ``down`` refuses them, ``accept`` refuses after n."""

    def __init__(self) -> None:
        super().__init__("list")
        self.sent: list[dict[str, Any]] = []
        self.down = False
        self.accept: int | None = None

    def publish(self, job: sm.Job) -> None:
        if self.down or (self.accept is not None and len(self.sent) >= self.accept):
            raise ConnectionError("the broker is down")
        self.sent.append(payload(job))

    def deliver_all(self, mesh: sm.Mesh) -> None:
        while self.sent:
            mesh.perform(self.sent.pop(0))


@sm.step
def double(x: int) -> int:
    return 2 * x


@sm.workflow
def doubler():
    a = yield double(1)
    b = yield double(a)
    return b


@pytest.fixture(params=["memory", "sqlite"])
def mesh(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'sm.db'}"
    broker = ListBroker()
    with sm.Mesh(url, workflows=[doubler], executor=broker) as mesh:
        mesh.migrate()
        yield mesh


def test_jobs_reach_the_broker_after_commit_and_leave_the_outbox(mesh: sm.Mesh) -> None:
    broker: ListBroker = mesh.executor  # type: ignore[assignment]
    run = mesh.start_run(doubler)
    assert [(j["kind"], j["run_id"], j["id"]) for j in broker.sent] == [
        ("activate", str(run.id), None)
    ]
    assert broker.pending() == []
    broker.deliver_all(mesh)
    assert mesh.inspect_run(run.id).result == 4
    assert broker.pending() == [] and mesh.drain() == 0


def test_a_broker_outage_leaves_the_jobs_in_the_outbox(
    mesh: sm.Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    broker: ListBroker = mesh.executor  # type: ignore[assignment]
    broker.down = True
    with caplog.at_level(logging.WARNING, "squidmesh.outbox"):
        run = mesh.start_run(doubler)  # the commit stands; the relay failure is logged
    assert "relay failed" in caplog.text
    (job,) = broker.pending()
    assert (job.kind, job.run_id) == ("activate", str(run.id))
    assert mesh.drain() == 0  # no database worker claims an outbox row
    broker.down = False
    assert broker.relay_pending() == 1
    broker.deliver_all(mesh)
    assert mesh.inspect_run(run.id).result == 4


def test_after_a_failed_relay_commits_leave_relaying_to_the_relay_thread(
    mesh: sm.Mesh,
) -> None:
    broker: ListBroker = mesh.executor  # type: ignore[assignment]
    broker.down = True
    mesh.start_run(doubler)
    broker.down = False
    mesh.start_run(doubler)  # within the cooldown: after_commit does not try
    assert broker.sent == [] and len(broker.pending()) == 2
    broker.start_relay(interval=0.05)
    try:
        from squidmesh.runtime.worker import wait_until

        assert wait_until(lambda: len(broker.sent) == 2, 5)
    finally:
        broker.stop_relay()
    assert broker.pending() == []


def test_a_refused_job_stays_and_the_ones_before_it_are_gone(mesh: sm.Mesh) -> None:
    broker: ListBroker = mesh.executor  # type: ignore[assignment]
    broker.down = True
    runs = [mesh.start_run(doubler) for _ in range(3)]
    broker.down, broker.accept = False, 2
    with pytest.raises(ConnectionError):
        broker.relay_pending()
    assert [j["run_id"] for j in broker.sent] == [str(r.id) for r in runs[:2]]
    assert [j.run_id for j in broker.pending()] == [str(runs[2].id)]


def test_a_rolled_back_change_leaves_nothing_in_the_outbox(mesh: sm.Mesh) -> None:
    broker: ListBroker = mesh.executor  # type: ignore[assignment]
    with pytest.raises(RuntimeError), mesh.store.transaction() as tx:
        broker.enqueue([sm.Job("activate", "r-1")], connection=tx)
        raise RuntimeError("the change fails")
    assert broker.pending() == []


def test_delayed_jobs_carry_their_due_time() -> None:
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert due_at(sm.Job("activate", "r", run_at=later)) == later
    assert due_at(sm.Job("activate", "r", run_at=later - timedelta(hours=1))) is None
    assert due_at(sm.Job("activate", "r")) is None
    assert OUTBOX_LEASE.year == 9999


def test_an_unbound_outbox_says_so() -> None:
    with pytest.raises(RuntimeError, match="not bound"):
        ListBroker().relay_pending()


def test_import_squidmesh_imports_no_broker_library() -> None:
    code = (
        "import sys, squidmesh\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('celery', 'procrastinate')"
        " or m.startswith('squidmesh.contrib')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


BROKERED = sm.Queue("outbox-brokered", concurrency=1)


@sm.step(queue=BROKERED)
def limited(x: int) -> int:
    return x + 1


@sm.workflow(queue=sm.Queue("outbox-runs", concurrency=1))
def queued_runs():
    return (yield double(1))


@sm.workflow
def queued_steps():
    return (yield limited(1))


def test_a_queued_workflow_is_refused_by_a_broker_executor() -> None:
    # A broker starts whatever it is handed: a queue's limit would not hold, silently.
    with pytest.raises(sm.DefinitionError) as refused:
        sm.Mesh("memory://", workflows=[queued_runs], executor=ListBroker())
    message = str(refused.value)
    assert "queued_runs" in message and "'outbox-runs'" in message
    assert "ListBroker" in message and "default executor" in message
    mesh = sm.Mesh("memory://", executor=ListBroker())
    with pytest.raises(sm.DefinitionError):
        mesh.register(queued_runs)
    assert "queued_runs" not in mesh.workflows
    mesh.close()


def test_a_queued_step_through_a_broker_is_said_to_run_without_its_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A step's queue is known only when the step is called: the run goes on (the broker
    # runs it), and the log says, once per queue, that the limit does not hold.
    broker = ListBroker()
    with sm.Mesh(
        f"sqlite:///{tmp_path / 'sm.db'}", workflows=[queued_steps], executor=broker
    ) as mesh:
        with caplog.at_level(logging.WARNING, logger="squidmesh"):
            first = mesh.start_run(queued_steps)
            second = mesh.start_run(queued_steps)
            broker.deliver_all(mesh)
        assert [mesh.inspect_run(r.id).result for r in (first, second)] == [2, 2]
    warnings = [r.getMessage() for r in caplog.records if "outbox-brokered" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "without the queue's limits" in warnings[0] and "step limited" in warnings[0]
