"""What a store offers beyond transactions: being woken up, and being the only one.

Two things the runtime needs from the database outside any transaction, each behind a
small protocol of ``storage/base.py`` so the runtime never opens a connection itself:

- ``Wakeups`` (``Store.wakeups()``): a worker waits on the jobs channel and is woken
  when a job is committed. PostgreSQL: a dedicated ``LISTEN`` session that reconnects
  with backoff; each (re)connection also wakes the worker, since NOTIFYs sent while it
  was away are lost and jobs may be waiting. Other stores have none: workers poll.
- ``Leadership`` (``Store.leadership(name)``): a lock at most one process holds at a
  time, for as long as it lives (the cron scheduler). PostgreSQL: a session advisory
  lock on a dedicated connection, released when the session ends, so a crashed
  leader's lock goes with its connection. Other stores: every process leads (their
  duplicates are refused by unique keys anyway: a cron tick is recorded once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["LISTEN_MAX_BACKOFF", "EveryoneLeads", "PgLeadership", "PgWakeups"]

log = logging.getLogger("squidmesh.worker")

#: the longest pause between attempts to get the LISTEN session back (seconds): short,
#: because a failed connect is cheap and reconnecting is what tells a worker that the
#: database is back
LISTEN_MAX_BACKOFF = 2.0


class PgWakeups:
    """``LISTEN`` on a channel in a session of its own."""

    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._channel = channel

    def listen(self, wake: Callable[[], None], stopping: threading.Event, *, name: str) -> None:
        """Call ``wake()`` for each notification (and after each (re)connect) until
        ``stopping`` is set; ``name`` names the listener in log lines."""
        import psycopg

        backoff = 0.5
        while not stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f'LISTEN "{self._channel}"')
                    backoff = 0.5
                    wake()  # catch anything committed while we were away
                    while not stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            wake()
            except psycopg.Error as exc:
                if stopping.is_set():
                    return
                log.warning("worker %s lost its LISTEN connection (%s); retrying", name, exc)
                stopping.wait(backoff)
                backoff = min(backoff * 2, LISTEN_MAX_BACKOFF)


def advisory_key(name: str, schema: str) -> str:
    """The text whose ``hashtext`` is the advisory lock of leadership ``name`` in
    ``schema`` (one leader per schema)."""
    return f"squidmesh-{name}:{schema}"


class PgLeadership:
    """A session advisory lock on ``key`` (``pg_try_advisory_lock(hashtext(key))``)."""

    def __init__(self, conninfo: str, key: str) -> None:
        self._conninfo = conninfo
        self._key = key
        self._conn: Any = None

    def acquire(self) -> bool:
        """Take the lock if no one holds it; False otherwise."""
        import psycopg

        self._conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            row = self._conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (self._key,)
            ).fetchone()
        except BaseException:
            self.release()  # the session is of no use: close it now, not at collection
            raise
        if not row or not row[0]:
            self.release()
            return False
        return True

    def alive(self) -> bool:
        """Whether the session holding the lock is still there (so the lock is held)."""
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # ending the session releases the advisory lock
            except Exception:
                pass
            self._conn = None


class EveryoneLeads:
    """Leadership where there is nothing to coordinate: always held."""

    def acquire(self) -> bool:
        return True

    def alive(self) -> bool:
        return True

    def release(self) -> None:
        pass
