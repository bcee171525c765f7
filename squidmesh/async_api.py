"""The ``_async`` twins of ``Mesh``'s methods: the same API for ``asyncio`` code.

``await mesh.start_run_async(...)`` does exactly what ``mesh.start_run(...)`` does, and
never blocks the event loop: the sync method runs on a small thread pool this Mesh owns
(``Mesh(async_threads=4)``, created on the first twin call and shut down by ``close()``).
SPEC 17 allows native async drivers or a bounded executor; the executor is the right
trade here. Every database call squidmesh makes is short (one transaction, a few
statements), the sync code path is the one the test suite, the benchmarks and the crash
tests exercise, and a second async store would double the storage code for no gain a
host could measure: the loop's lag under 100 concurrent twins is in benchmarks/README.md.

What a caller can rely on:

- A twin takes exactly the sync method's parameters and returns its result or raises its
  error (``tests/test_async_api.py`` pins the signatures to the sync ones).
- At most ``async_threads`` calls run at once; the others wait in the pool's queue, not
  on the event loop. Each call is one thread hop (about 0.1 ms) on top of its work.
- Context variables travel with the call (``contextvars.copy_context``), so an
  OpenTelemetry span or a request id active in the caller is active in the call.
- Cancelling the awaiting task stops the wait, not the call: a call already running in
  the pool finishes (its transaction commits or rolls back as a whole), as a sync call
  interrupted between two statements of the caller would.
- ``prune_async(progress=...)`` calls ``progress`` in the pool's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

from typing_extensions import ParamSpec

from squidmesh.core.arguments import count
from squidmesh.core.definition import WorkflowDefinition
from squidmesh.core.flow import Debounce
from squidmesh.core.records import Job
from squidmesh.runtime.events import LifecycleEvent
from squidmesh.runtime.queues import QueueState
from squidmesh.runtime.views import Explanation, Run
from squidmesh.runtime.worker import Worker
from squidmesh.types import RunStatus

if TYPE_CHECKING:
    from squidmesh.mesh import Mesh

__all__ = ["DEFAULT_ASYNC_THREADS", "AsyncMeshMethods"]

#: how many sync calls the twins of one Mesh run at once (``Mesh(async_threads=...)``)
DEFAULT_ASYNC_THREADS = 4

_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncMeshMethods:
    """The ``_async`` twin of every public ``Mesh`` method (``Mesh`` inherits them)."""

    _async_threads: int = DEFAULT_ASYNC_THREADS
    _async_pool: concurrent.futures.ThreadPoolExecutor | None = None
    _async_lock: threading.Lock

    # ------------------------------------------------------------------ the executor

    def _init_async(self, threads: int) -> None:
        self._async_threads = count(threads, what="async_threads")
        self._async_pool = None
        self._async_lock = threading.Lock()

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._async_lock:
            if self._async_pool is None:
                # Created on first use: a Mesh used only synchronously starts no thread.
                # After close() a new pool is made on demand, as the engine reconnects.
                self._async_pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._async_threads, thread_name_prefix="squidmesh-async"
                )
            return self._async_pool

    def _close_async(self) -> None:
        """Let the calls already handed to the pool finish, then stop its threads."""
        with self._async_lock:
            pool, self._async_pool = self._async_pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    async def _offload(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` on the pool, with the caller's context variables."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool(), call)

    def _sync(self) -> Mesh:
        return cast("Mesh", self)

    # ------------------------------------------------------------------ setup

    async def register_async(self, workflow: WorkflowDefinition) -> None:
        """Async twin of [`register`][squidmesh.Mesh.register]."""
        await self._offload(self._sync().register, workflow)

    async def migrate_async(self) -> list[str]:
        """Async twin of [`migrate`][squidmesh.Mesh.migrate]."""
        return await self._offload(self._sync().migrate)

    async def close_async(self) -> None:
        """Async twin of [`close`][squidmesh.Mesh.close]: waits for the calls of other
        twins already under way, stops the workers, releases the connections."""
        # Not on the pool: close() shuts the pool down and waits for its threads.
        await asyncio.to_thread(self._sync().close)

    # ------------------------------------------------------------------ observing

    async def subscribe_async(
        self, callback: Callable[[LifecycleEvent], object]
    ) -> Callable[[], None]:
        """Async twin of [`subscribe`][squidmesh.Mesh.subscribe]. The callback is still
        called synchronously, in the thread that committed the change."""
        return await self._offload(self._sync().subscribe, callback)

    # ------------------------------------------------------------------ starting runs

    async def start_run_async(
        self,
        workflow: str | WorkflowDefinition,
        payload: Mapping[str, Any] | None = None,
        *,
        trigger: str | None = None,
        idempotency_key: str | None = None,
        schedule: dict[str, Any] | None = None,
        actor: str | None = None,
        start_at: datetime | None = None,
        delay: float | None = None,
        deadline: datetime | None = None,
        key: Any = None,
        priority: int | None = None,
        debounce: Debounce | None = None,
    ) -> Run:
        """Async twin of [`start_run`][squidmesh.Mesh.start_run]."""
        return await self._offload(
            self._sync().start_run,
            workflow,
            payload,
            trigger=trigger,
            idempotency_key=idempotency_key,
            schedule=schedule,
            actor=actor,
            start_at=start_at,
            delay=delay,
            deadline=deadline,
            key=key,
            priority=priority,
            debounce=debounce,
        )

    async def fire_cron_async(
        self,
        workflow: str | WorkflowDefinition,
        trigger: str,
        fire_time: datetime,
        *,
        payload: Mapping[str, Any] | None = None,
    ) -> Run:
        """Async twin of [`fire_cron`][squidmesh.Mesh.fire_cron]."""
        return await self._offload(
            self._sync().fire_cron, workflow, trigger, fire_time, payload=payload
        )

    # ------------------------------------------------------------------ reading

    async def inspect_run_async(self, run_id: Any, *, include_history: bool = False) -> Run:
        """Async twin of [`inspect_run`][squidmesh.Mesh.inspect_run]."""
        return await self._offload(
            self._sync().inspect_run, run_id, include_history=include_history
        )

    async def get_published_async(self, run_id: Any, name: str | None = None) -> Any:
        """Async twin of [`get_published`][squidmesh.Mesh.get_published]."""
        return await self._offload(self._sync().get_published, run_id, name)

    async def queues_async(self) -> list[QueueState]:
        """Async twin of [`queues`][squidmesh.Mesh.queues]."""
        return await self._offload(self._sync().queues)

    async def explain_run_async(self, run_id: Any) -> Explanation:
        """Async twin of [`explain_run`][squidmesh.Mesh.explain_run]."""
        return await self._offload(self._sync().explain_run, run_id)

    async def list_runs_async(
        self,
        *,
        status: str | RunStatus | None = None,
        workflow: str | WorkflowDefinition | None = None,
        limit: int = 50,
        before: datetime | Run | None = None,
        trigger: str | None = None,
        step: str | None = None,
        idempotency_key: str | None = None,
        id_prefix: str | None = None,
    ) -> list[Run]:
        """Async twin of [`list_runs`][squidmesh.Mesh.list_runs]."""
        return await self._offload(
            self._sync().list_runs,
            status=status,
            workflow=workflow,
            limit=limit,
            before=before,
            trigger=trigger,
            step=step,
            idempotency_key=idempotency_key,
            id_prefix=id_prefix,
        )

    async def count_runs_async(
        self,
        *,
        workflow: str | WorkflowDefinition | None = None,
        limit: int | None = None,
    ) -> dict[str, int]:
        """Async twin of [`count_runs`][squidmesh.Mesh.count_runs]."""
        return await self._offload(self._sync().count_runs, workflow=workflow, limit=limit)

    async def export_history_async(self, run_id: Any) -> dict[str, Any]:
        """Async twin of [`export_history`][squidmesh.Mesh.export_history]."""
        return await self._offload(self._sync().export_history, run_id)

    # ------------------------------------------------------------------ operator actions

    async def approve_run_async(
        self,
        run_id: Any,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Run:
        """Async twin of [`approve_run`][squidmesh.Mesh.approve_run]."""
        return await self._offload(
            self._sync().approve_run, run_id, actor=actor, comment=comment, metadata=metadata
        )

    async def reject_run_async(
        self,
        run_id: Any,
        *,
        actor: str,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Run:
        """Async twin of [`reject_run`][squidmesh.Mesh.reject_run]."""
        return await self._offload(
            self._sync().reject_run, run_id, actor=actor, comment=comment, metadata=metadata
        )

    async def unblock_run_async(
        self,
        run_id: Any,
        *,
        actor: str | None = None,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
        data: Any = None,
    ) -> Run:
        """Async twin of [`unblock_run`][squidmesh.Mesh.unblock_run]."""
        return await self._offload(
            self._sync().unblock_run,
            run_id,
            actor=actor,
            comment=comment,
            metadata=metadata,
            data=data,
        )

    async def send_event_async(
        self, run_id: Any, name: str, data: Any = None, *, actor: str | None = None
    ) -> Run:
        """Async twin of [`send_event`][squidmesh.Mesh.send_event]."""
        return await self._offload(self._sync().send_event, run_id, name, data, actor=actor)

    async def cancel_run_async(
        self,
        run_id: Any,
        *,
        actor: str | None = None,
        reason: str | None = None,
        compensate: bool = False,
    ) -> Run:
        """Async twin of [`cancel_run`][squidmesh.Mesh.cancel_run]."""
        return await self._offload(
            self._sync().cancel_run, run_id, actor=actor, reason=reason, compensate=compensate
        )

    async def resume_run_async(self, run_id: Any, *, actor: str | None = None) -> Run:
        """Async twin of [`resume_run`][squidmesh.Mesh.resume_run]."""
        return await self._offload(self._sync().resume_run, run_id, actor=actor)

    async def replay_run_async(
        self, run_id: Any, *, allow_irreversible: bool = False, actor: str | None = None
    ) -> Run:
        """Async twin of [`replay_run`][squidmesh.Mesh.replay_run]."""
        return await self._offload(
            self._sync().replay_run, run_id, allow_irreversible=allow_irreversible, actor=actor
        )

    async def fork_run_async(self, run_id: Any, *, at_seq: int, actor: str | None = None) -> Run:
        """Async twin of [`fork_run`][squidmesh.Mesh.fork_run]."""
        return await self._offload(self._sync().fork_run, run_id, at_seq=at_seq, actor=actor)

    async def prune_async(
        self,
        older_than: timedelta | datetime,
        statuses: Iterable[str] = ("completed", "cancelled", "failed"),
        *,
        batch_size: int = 500,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Async twin of [`prune`][squidmesh.Mesh.prune]; ``progress`` is called in the
        thread that runs the prune, not on the event loop."""
        return await self._offload(
            self._sync().prune, older_than, statuses, batch_size=batch_size, progress=progress
        )

    # ------------------------------------------------------------------ work

    async def perform_async(self, job: Job | Mapping[str, Any]) -> None:
        """Async twin of [`perform`][squidmesh.Mesh.perform]: the job's step runs in the
        pool's thread (an ``async def`` step on the Mesh's own step loop, as always)."""
        await self._offload(self._sync().perform, job)

    async def drain_async(self, *, limit: int | None = None) -> int:
        """Async twin of [`drain`][squidmesh.Mesh.drain]."""
        return await self._offload(self._sync().drain, limit=limit)

    async def worker_async(
        self,
        *,
        concurrency: int = 4,
        poll_interval: float = 2.0,
        lease_seconds: float = 30.0,
        scheduler: bool = True,
        name: str | None = None,
        sweep_interval: float = 30.0,
    ) -> Worker:
        """Async twin of [`worker`][squidmesh.Mesh.worker]: starts the worker thread
        (its schema check touches the database) without blocking the loop."""
        return await self._offload(
            self._sync().worker,
            concurrency=concurrency,
            poll_interval=poll_interval,
            lease_seconds=lease_seconds,
            scheduler=scheduler,
            name=name,
            sweep_interval=sweep_interval,
        )
