"""Clocks: the local one, and the database's clock as seen from this process.

On PostgreSQL every process reads time the same way: its local clock corrected by the
offset to the database server's ``clock_timestamp()``, measured on first use and again
every ``refresh`` seconds. Timers, retry times, lease and claim decisions then agree
across machines whose clocks disagree (a worker whose clock ran 40 s fast took every
live lease). The claim itself is judged by the server in SQL.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

from squidmesh.errors import StorageError
from squidmesh.storage.base import Store

__all__ = ["DatabaseClock", "local_now"]

log = logging.getLogger("squidmesh")


def local_now() -> datetime:
    """This machine's idea of now, in UTC."""
    return datetime.now(timezone.utc)


class DatabaseClock:
    """``local_now()`` plus the measured offset to the database's clock."""

    def __init__(self, store: Store, *, refresh: float = 60.0) -> None:
        self.store = store
        self.refresh = refresh
        self._offset = timedelta(0)
        self._measured_at: float | None = None
        self._lock = threading.Lock()

    @property
    def offset(self) -> timedelta:
        """How far the database's clock is ahead of this machine's (last measured)."""
        return self._offset

    def __call__(self) -> datetime:
        measured = self._measured_at
        if measured is None or time.monotonic() - measured > self.refresh:
            self.measure()
        return local_now() + self._offset

    def measure(self) -> None:
        """Read the database's clock once; on failure keep the last offset."""
        if not self._lock.acquire(blocking=False):
            return  # another thread is measuring: use the current offset
        try:
            before = local_now()
            try:
                with self.store.transaction() as tx:
                    server = tx.database_time()
            except StorageError as exc:
                log.debug("could not read the database's clock (%s); offset kept", exc)
                self._measured_at = time.monotonic()
                return
            after = local_now()
            if server is not None:
                # The server read its clock somewhere between our two readings.
                self._offset = server - (before + (after - before) / 2)
            self._measured_at = time.monotonic()
        finally:
            self._lock.release()
