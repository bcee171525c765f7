"""Whether the process that holds a lease is still alive, judged without its clock.

Every process that performs jobs has an owner id (``host:pid:token``, see
``squidmesh.runtime.presence``) and *holds* it for as long as it lives:

- on PostgreSQL as a session advisory lock on a connection of its own: the server
  releases it the moment that session ends (the process died, or its network did), and
  nothing the process does or fails to do meanwhile matters. A step that holds the GIL
  for minutes starves the process's heartbeat thread, but not the lock;
- on SQLite (one machine) by its process id, which the kernel answers for;
- in memory, by being registered in this process.

An expired lease is taken over only from an owner that is no longer alive (or after
``STALE_LEASE`` without a renewal, the bound on how long a live process may stall).
"""

from __future__ import annotations

import os
import socket
import threading

__all__ = [
    "ADVISORY_PREFIX",
    "STALE_LEASE_SECONDS",
    "alive_here",
    "held",
    "release",
]

#: prefix of the text whose hash is an owner's PostgreSQL advisory lock key
ADVISORY_PREFIX = "squidmesh-worker:"
#: a lease not renewed for this long is taken over even from a live owner (a process
#: stalled that long is treated as lost)
STALE_LEASE_SECONDS = 900.0

_lock = threading.Lock()
_held: set[str] = set()
_HOST = socket.gethostname()


def held(owner: str) -> None:
    """Record that this process holds ``owner`` (it is alive while registered here)."""
    with _lock:
        _held.add(owner)


def release(owner: str) -> None:
    with _lock:
        _held.discard(owner)


def alive_here(owner: str | None) -> bool:
    """Whether ``owner`` is alive, as this machine can tell without a database: held by
    this process, or a process of this host that still exists."""
    if owner is None:
        return False
    with _lock:
        if owner in _held:
            return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False  # another machine, or not an owner id: treat as gone
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this process, and it no longer holds that id
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
