"""Calling user step and compensation functions: arguments, async, timeouts, context.

One ``Invoker`` per Mesh. It keeps:

- one persistent event loop, in a thread of its own, on which every ``async def`` step
  runs: loop-bound clients (async HTTP sessions, asyncpg pools) keep working from one
  step to the next. ``timeout`` cancels an async step's coroutine.
- the bodies of sync attempts that outlived their ``timeout``. Python cannot kill a
  thread, so such a body runs on after its attempt was recorded as timed out; the next
  attempt of the same step in this process waits until it has returned (no two attempts
  of one step ever run at the same time in one process), and its overrun is reported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from squidmesh.core.context import StepContext, reset_step_context, set_step_context
from squidmesh.core.definition import StepDefinition

__all__ = ["Body", "Invoker", "StepTimeoutError", "resolve_ref"]

log = logging.getLogger("squidmesh.worker")


class StepTimeoutError(TimeoutError):
    """A step attempt ran longer than its timeout."""


#: (run id, seq, "step" | "compensation"): what may not run twice at once in a process
BodyKey = tuple[str, int, str]


class Body:
    """One running body of a step (or compensation) attempt in this process."""

    def __init__(self, key: BodyKey, attempt: int) -> None:
        self.key = key
        self.attempt = attempt
        self.done = threading.Event()
        #: set when the attempt timed out while this body went on running
        self.timeout: float | None = None
        self.timed_out_at: float | None = None
        #: seconds the body ran past its timeout, once it returned
        self.overran_by: float | None = None

    def returned(self) -> None:
        if self.timed_out_at is not None:
            self.overran_by = round(time.monotonic() - self.timed_out_at, 3)
        self.done.set()


class Invoker:
    """Runs step and compensation bodies for one Mesh (see the module docstring)."""

    def __init__(self, *, on_overrun: Callable[[Body], None] | None = None) -> None:
        #: told, from the body's own thread, when a timed-out body finally returns
        self.on_overrun = on_overrun
        self._lock = threading.Lock()
        #: the body of each step call running in this process (at most one per call)
        self._bodies: dict[BodyKey, Body] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public

    def call_step(
        self,
        definition: StepDefinition[Any, Any],
        stored_input: Mapping[str, Any],
        context: StepContext,
        *,
        override: Callable[..., Any] | None = None,
    ) -> Any:
        """Run one attempt of a step with its recorded arguments under ``step_context()``."""
        args, kwargs = definition.decode_arguments(stored_input)
        return self._run(
            override or definition.fn,
            args,
            kwargs,
            context,
            timeout=definition.timeout,
            key=(context.run_id, context.seq, "step"),
            label=f"step {definition.name} (run {context.run_id}, seq {context.seq})",
        )

    def call_compensation(
        self,
        compensate: Callable[..., Any],
        *,
        input: Any,
        output: Any,
        failure: dict[str, Any] | None,
        context: StepContext,
    ) -> Any:
        """Run a compensation with the documented keywords ``input``, ``output``, ``failure``."""
        fn = compensate.fn if isinstance(compensate, StepDefinition) else compensate
        timeout = compensate.timeout if isinstance(compensate, StepDefinition) else None
        return self._run(
            fn,
            [],
            {"input": input, "output": output, "failure": failure},
            context,
            timeout=timeout,
            key=(context.run_id, context.seq, "compensation"),
            label=f"compensation of {context.step} (run {context.run_id})",
        )

    def _enter(self, key: BodyKey, attempt: int) -> Body:
        """Register the body of attempt ``attempt`` of ``key``, first waiting until an
        earlier body of the same call in this process has returned: no two attempts of
        one step run at the same time here, even when an earlier one timed out or was
        declared lost while its body could not be stopped."""
        while True:
            with self._lock:
                earlier = self._bodies.get(key)
                if earlier is None:
                    body = self._bodies[key] = Body(key, attempt)
                    return body
            log.warning(
                "run %s seq %d: attempt %d is still running in this process; attempt %d "
                "waits for it to return (a sync body cannot be stopped)",
                key[0],
                key[1],
                earlier.attempt,
                attempt,
            )
            earlier.done.wait()

    def _leave(self, body: Body) -> None:
        with self._lock:
            if self._bodies.get(body.key) is body:
                del self._bodies[body.key]
        body.returned()

    def close(self) -> None:
        """Stop the event loop of async steps."""
        with self._lock:
            loop, self._loop = self._loop, None
            thread, self._loop_thread = self._loop_thread, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(5)
        if loop is not None and not loop.is_running():
            loop.close()

    # ------------------------------------------------------------------ running

    def _run(
        self,
        fn: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        context: StepContext,
        *,
        timeout: float | None,
        key: BodyKey,
        label: str,
    ) -> Any:
        body = self._enter(key, context.attempt)
        handed_over = False
        try:
            token = set_step_context(context)
            try:
                if inspect.iscoroutinefunction(fn):
                    return self._run_async(fn(*args, **kwargs), timeout, label)
                if timeout is None:
                    result = fn(*args, **kwargs)
                    if inspect.isawaitable(result):
                        return self._run_async(_awaiting(result), None, label)
                    return result
            finally:
                reset_step_context(token)
            handed_over = True  # the helper thread leaves the body when it returns
            return self._run_in_thread(fn, args, kwargs, context, timeout, body, label)
        finally:
            if not handed_over:
                self._leave(body)

    def _run_async(
        self, coroutine: Coroutine[Any, Any, Any], timeout: float | None, label: str
    ) -> Any:
        # The step context travels with the coroutine's task (context variables).
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(coroutine, timeout), self._event_loop()
        )
        try:
            return future.result()
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
            # wait_for cancelled the coroutine: it does not run on beside its retry.
            raise StepTimeoutError(f"{label} timed out after {timeout:g}s") from None

    def _run_in_thread(
        self,
        fn: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        context: StepContext,
        timeout: float,
        body: Body,
        label: str,
    ) -> Any:
        # A helper thread lets the caller stop waiting; Python cannot kill the thread, so a
        # timed-out body keeps running until it returns on its own (recorded as overrun).
        snapshot = contextvars.copy_context()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run_body() -> None:
            token = set_step_context(context)
            try:
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = self._run_async(_awaiting(result), None, label)
                future.set_result(result)
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                reset_step_context(token)
                self._leave(body)
                if body.overran_by is not None:
                    self._overran(body, label)

        thread = threading.Thread(
            target=snapshot.run, args=(run_body,), name="squidmesh-step", daemon=True
        )
        thread.start()
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            with self._lock:
                if not body.done.is_set():
                    body.timeout = timeout
                    body.timed_out_at = time.monotonic()
            raise StepTimeoutError(f"{label} timed out after {timeout:g}s") from None

    def _overran(self, body: Body, label: str) -> None:
        log.warning(
            "%s (attempt %d) returned %.1fs after its %gs timeout; its result was discarded",
            label,
            body.attempt,
            body.overran_by or 0.0,
            body.timeout or 0.0,
        )
        if self.on_overrun is not None:
            try:
                self.on_overrun(body)
            except Exception:
                log.exception("could not record the overrun of %s", label)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="squidmesh-async-steps", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop


async def _awaiting(awaitable: Any) -> Any:
    return await awaitable


def resolve_ref(ref: str) -> Any:
    """Import ``module:qualname``; None when it cannot be found (e.g. a nested function)."""
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname or "<locals>" in qualname:
        return None
    import importlib

    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj
