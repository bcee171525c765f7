"""Calling user step and compensation functions: arguments, async, timeouts, context."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from squidmesh.core.context import StepContext, reset_step_context, set_step_context
from squidmesh.core.definition import StepDefinition

__all__ = ["StepTimeoutError", "call_compensation", "call_maybe_async", "call_step"]


class StepTimeoutError(TimeoutError):
    """A step attempt ran longer than its timeout."""


def call_maybe_async(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call ``fn``; when it is a coroutine function, run it to completion on a new loop."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):

        async def wait() -> Any:
            return await result

        return asyncio.run(wait())
    return result


def _with_timeout(
    fn: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    timeout: float | None,
    label: str,
) -> Any:
    if timeout is None:
        return call_maybe_async(fn, args, kwargs)
    # A helper thread lets the caller stop waiting; Python cannot kill the thread, so a
    # timed-out sync step keeps running in the background until it returns on its own.
    context = contextvars.copy_context()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="squidmesh-step")
    future = pool.submit(context.run, call_maybe_async, fn, args, kwargs)
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise StepTimeoutError(f"{label} timed out after {timeout:g}s") from None
    finally:
        pool.shutdown(wait=False)


def call_step(
    definition: StepDefinition[Any, Any],
    stored_input: Mapping[str, Any],
    context: StepContext,
    *,
    override: Callable[..., Any] | None = None,
) -> Any:
    """Run one attempt of a step with its recorded arguments under ``step_context()``."""
    args, kwargs = definition.decode_arguments(stored_input)
    token = set_step_context(context)
    try:
        return _with_timeout(
            override or definition.fn,
            args,
            kwargs,
            definition.timeout,
            f"step {definition.name} (run {context.run_id}, seq {context.seq})",
        )
    finally:
        reset_step_context(token)


def call_compensation(
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
    token = set_step_context(context)
    try:
        return _with_timeout(
            fn,
            [],
            {"input": input, "output": output, "failure": failure},
            timeout,
            f"compensation of {context.step} (run {context.run_id})",
        )
    finally:
        reset_step_context(token)


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
