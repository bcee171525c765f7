"""``AsyncPool``: the thread pool behind the ``_async`` twins of ``Mesh``'s methods.

``await mesh.start_run_async(...)`` does exactly what ``mesh.start_run(...)`` does, and
never blocks the event loop: the sync method runs on a small thread pool this Mesh owns
(``Mesh(async_threads=4)``, created on the first twin call and shut down by ``close()``).
SPEC 17 allows native async drivers or a bounded executor; the executor is the right
trade here. Every database call squidmesh makes is short (one transaction, a few
statements), the sync code path is the one the test suite, the benchmarks and the crash
tests exercise, and a second async store would double the storage code for no gain a
host could measure: the loop's lag under 100 concurrent twins is in benchmarks/README.md.

The twins are declared on ``Mesh`` itself (``squidmesh/mesh.py``), each one line: hand
the sync method and its arguments to this Mesh's ``AsyncPool``. The pool knows nothing of
the Mesh; it runs a callable off the event loop.

What a caller can rely on:

- A twin takes exactly the sync method's parameters and returns its result or raises its
  error (``tests/runtime/test_async_api.py`` pins the signatures to the sync ones).
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
from collections.abc import Callable
from typing import TypeVar

from typing_extensions import ParamSpec

from squidmesh.core.arguments import count

__all__ = ["DEFAULT_ASYNC_THREADS", "AsyncPool"]

#: how many sync calls the twins of one Mesh run at once (``Mesh(async_threads=...)``)
DEFAULT_ASYNC_THREADS = 4

_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncPool:
    """Runs sync calls for coroutines: at most ``threads`` at once, on threads created on
    the first call (a Mesh used only synchronously starts none) and stopped by ``close``."""

    def __init__(self, threads: int = DEFAULT_ASYNC_THREADS) -> None:
        self.threads = count(threads, what="async_threads")
        #: the executor while one is running (None before the first call and after close)
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self.pool is None:
                # Created on first use: a Mesh used only synchronously starts no thread.
                # After close() a new pool is made on demand, as the engine reconnects.
                self.pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.threads, thread_name_prefix="squidmesh-async"
                )
            return self.pool

    def close(self) -> None:
        """Let the calls already handed to the pool finish, then stop its threads."""
        with self._lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    async def run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` on the pool, with the caller's context variables."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor(), call)
