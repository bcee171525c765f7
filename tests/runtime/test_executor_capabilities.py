"""Executors declare what they do beyond ``enqueue``; the Mesh acts on the declaration,
never on the methods an object happens to have."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import squidmesh as sm
from squidmesh.runtime.executors import capabilities_of
from squidmesh.storage.base import JobWrite, WriteBatch


@sm.step
def noop() -> int:
    return 1


@sm.workflow
def one_step(payload: dict[str, Any]) -> Any:
    return (yield noop())


class Recording:
    """Keeps the jobs it is given as rows (like the default) and records every call."""

    def __init__(self, capabilities: sm.ExecutorCapabilities | None) -> None:
        if capabilities is not None:
            self.capabilities = capabilities
        self.calls: list[str] = []

    def bind(self, mesh: Any) -> None:
        self.calls.append("bind")

    def enqueue(self, jobs: Sequence[sm.Job], *, connection: Any) -> None:
        self.calls.append("enqueue")
        connection.write(WriteBatch(jobs_insert=[JobWrite(job) for job in jobs]))

    def after_commit(self) -> None:
        self.calls.append("after_commit")


def test_optional_methods_are_called_only_when_declared() -> None:
    silent = Recording(None)
    with sm.Mesh("memory://", workflows=[one_step], executor=silent) as mesh:
        mesh.start_run(one_step, {})
    assert silent.calls == ["enqueue"]  # bind and after_commit exist but are not declared

    declared = Recording(sm.ExecutorCapabilities(binds=True, after_commit=True))
    with sm.Mesh("memory://", workflows=[one_step], executor=declared) as mesh:
        mesh.start_run(one_step, {})
    assert declared.calls == ["bind", "enqueue", "after_commit"]


def test_a_database_executor_subclass_with_its_own_enqueue_gets_it_called() -> None:
    class Counting(sm.DatabaseExecutor):
        def __init__(self) -> None:
            self.enqueued = 0

        def enqueue(self, jobs: Sequence[sm.Job], *, connection: Any) -> None:
            self.enqueued += len(jobs)
            super().enqueue(jobs, connection=connection)

    assert capabilities_of(sm.DatabaseExecutor()).batched
    counting = Counting()
    caps = capabilities_of(counting)
    assert caps.jobs_in_table and not caps.batched
    with sm.Mesh("memory://", workflows=[one_step], executor=counting) as mesh:
        run = mesh.start_run(one_step, {})
        mesh.drain()
        assert mesh.inspect_run(run.id).status == "completed"
    assert counting.enqueued == 2  # the activation, then the step


def test_an_object_declaring_nothing_has_no_capabilities() -> None:
    assert capabilities_of(object()) == sm.ExecutorCapabilities()
