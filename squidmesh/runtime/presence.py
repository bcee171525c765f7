"""This process's presence as a performer of jobs: its owner id, held alive.

A Mesh that performs jobs (a worker, ``drain()``, or a host performing broker jobs)
gets an owner id ``host:pid:token``, registers it in the workers table and *holds* it
for as long as it lives (see ``squidmesh.storage.liveness``): leases it takes and the
attempts it runs carry that id, so any other process can tell a live attempt from a lost
one without trusting clocks. A thread renews the hold, touches the workers row, and lets
the job runner save heartbeats and enforce ``heartbeat_timeout`` (``tend``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from datetime import datetime

from squidmesh.errors import StorageError
from squidmesh.storage.base import Holding, Store

__all__ = ["Presence"]

log = logging.getLogger("squidmesh.worker")

HOST = socket.gethostname()
#: how often the presence thread wakes (heartbeat timeouts are judged this finely)
TICK = 0.5
#: how often the hold is checked and the workers row touched
TOUCH_EVERY = 10.0


class Presence:
    """One per Mesh; started by the first job it performs (``owner()``)."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        *,
        tend: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.tend = tend
        self.id = _new_id()
        self._lock = threading.Lock()
        self._holding: Holding | None = None
        self._ticks = 0

    def owner(self) -> str:
        """This process's owner id, held alive from the first call until ``close()``."""
        if self._holding is None:
            with self._lock:
                if self._holding is None:
                    holding = self.store.hold(self.id)
                    try:
                        with self.store.transaction() as tx:
                            tx.register_worker(self.id, HOST, os.getpid(), self.clock())
                    except BaseException:
                        holding.release()
                        raise
                    self._holding = holding
                    _TICKER.add(self)
        return self.id

    @property
    def started(self) -> bool:
        return self._holding is not None

    def tick(self) -> None:
        """One beat of the shared presence thread."""
        self._ticks += 1
        if self._ticks % max(1, int(TOUCH_EVERY / TICK)) == 0:
            self._touch()
        if self.tend is not None:
            try:
                self.tend()
            except StorageError as exc:
                log.warning("could not save heartbeats (will retry): %s", exc)
            except Exception:
                log.exception("squidmesh: tending running attempts failed")

    def _touch(self) -> None:
        holding = self._holding
        if holding is None:
            return
        try:
            holding.renew()
            with self.store.transaction() as tx:
                tx.touch_worker(self.id, self.clock())
        except StorageError as exc:
            log.warning("worker %s could not renew its presence: %s", self.id, exc)

    def abandon(self) -> None:
        """Let go the way a killed process does: the hold ends, nothing is recorded. The
        attempts and leases of this owner then look lost to everyone (tests use it to
        stand in for a crash)."""
        _TICKER.discard(self)
        with self._lock:
            holding, self._holding = self._holding, None
        if holding is not None:
            holding.release()
        self.id = _new_id()

    def close(self) -> None:
        _TICKER.discard(self)
        with self._lock:
            holding, self._holding = self._holding, None
        if holding is None:
            return
        try:
            with self.store.transaction() as tx:
                tx.stop_worker(self.id, self.clock())
        except StorageError as exc:
            log.warning("worker %s could not record that it stopped: %s", self.id, exc)
        finally:
            holding.release()
            self.id = _new_id()  # used again, this Mesh starts a new life


def _new_id() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Ticker:
    """One daemon thread for every presence of the process (tests build many Meshes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._presences: weakref.WeakSet[Presence] = weakref.WeakSet()
        self._thread: threading.Thread | None = None

    def add(self, presence: Presence) -> None:
        with self._lock:
            self._presences.add(presence)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="squidmesh-presence", daemon=True
                )
                self._thread.start()

    def discard(self, presence: Presence) -> None:
        with self._lock:
            self._presences.discard(presence)

    def _run(self) -> None:
        while True:
            time.sleep(TICK)
            with self._lock:
                presences = list(self._presences)
            for presence in presences:
                presence.tick()


_TICKER = _Ticker()
