"""Shared plumbing: throwaway databases, timing, statistics, SQL counting, machine facts."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

__all__ = [
    "DB_PREFIX",
    "CpuWindow",
    "Databases",
    "Measure",
    "SqlCounter",
    "direct_writes",
    "machine_info",
    "percentile",
    "wait_for",
]

DB_PREFIX = "sqm_bench_"


@dataclasses.dataclass
class Measure:
    """One row of the results table (plus everything behind it in ``data``)."""

    bench: str
    label: str
    measured: str
    target: str = "-"
    verdict: str = "info"  # "met", "MISSED", "info", "skipped", "error"
    ratio: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.001) -> bool:
    """Spin-wait (sleeping ``interval``) until ``predicate()`` holds or ``timeout`` passes."""
    deadline = time.perf_counter() + timeout
    while True:
        if predicate():
            return True
        if time.perf_counter() > deadline:
            return False
        time.sleep(interval)


def _with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


class Databases:
    """Creates uniquely named ``sqm_bench_*`` databases on a server and drops every one
    of them on ``drop_all()`` (called from a ``finally``): only databases it created."""

    def __init__(self, server_url: str) -> None:
        if server_url.startswith("postgresql+psycopg://"):
            server_url = "postgresql://" + server_url[len("postgresql+psycopg://") :]
        self.server_url = server_url
        self.created: list[str] = []
        self._tag = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._lock = threading.Lock()
        self._counter = 0

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.server_url, autocommit=True)

    def create(self, purpose: str) -> str:
        """A new empty database; returns its libpq URL."""
        with self._lock:
            self._counter += 1
            name = f"{DB_PREFIX}{self._tag}_{self._counter}_{purpose}"[:63].lower()
            with self._admin() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            self.created.append(name)
        return _with_dbname(self.server_url, name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with self._lock:
            if name not in self.created:
                raise ValueError(f"refusing to drop {name!r}: not created by this run")
            self._drop(name)
            self.created.remove(name)

    def _drop(self, name: str) -> None:
        assert name.startswith(DB_PREFIX)
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @contextlib.contextmanager
    def fresh(self, purpose: str) -> Iterator[str]:
        """A fresh database for the block, dropped afterwards (also on failure)."""
        url = self.create(purpose)
        try:
            yield url
        finally:
            self.drop(url)

    def drop_all(self) -> list[str]:
        """Drop whatever is left (after a failure); returns names that could not be dropped."""
        failed = []
        with self._lock:
            for name in list(self.created):
                try:
                    self._drop(name)
                    self.created.remove(name)
                except psycopg.Error:
                    failed.append(name)
        return failed


def sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


#: called with (statement, whether it went without a SQLAlchemy connection) for every
#: state-change write squidmesh sends straight to psycopg
_direct_listeners: list[Callable[[str, bool], None]] = []


def _install_direct_writes() -> None:
    """squidmesh sends a state change's write, and a run's locked read with its history,
    on PostgreSQL straight to psycopg (``SqlTransaction.write``,
    ``lock_run_with_history``), past SQLAlchemy's events: wrap them once so the counters
    see those statements too."""
    from squidmesh.storage.sql import SqlTransaction

    original = SqlTransaction.write
    if getattr(original, "_bench_wrapped", False):
        return
    original_lock = SqlTransaction.lock_run_with_history

    def write(self: Any, batch: Any, **options: Any) -> Any:
        sql_text = self._write_sql
        if sql_text is not None:  # PostgreSQL (SQLite writes on its driver's cursor)
            own = self._conn is None  # no SQLAlchemy connection: a pooled one, autocommit
            for listener in list(_direct_listeners):
                listener(sql_text, own)
        return original(self, batch, **options)

    def lock_run_with_history(self: Any, run_id: str, known: int | None) -> Any:
        reads = self._store.locked_reads
        if reads is not None:  # PostgreSQL: two statements, pipelined
            for listener in list(_direct_listeners):
                listener(reads.lock, False)
                listener(reads.history, False)
        return original_lock(self, run_id, known)

    write._bench_wrapped = True  # type: ignore[attr-defined]
    SqlTransaction.write = write  # type: ignore[method-assign]
    SqlTransaction.lock_run_with_history = lock_run_with_history  # type: ignore[method-assign]


@contextlib.contextmanager
def direct_writes(listener: Callable[[str, bool], None]) -> Iterator[None]:
    """Call ``listener(statement, pooled_autocommit)`` for each write squidmesh sends
    straight to psycopg while the block runs."""
    _install_direct_writes()
    _direct_listeners.append(listener)
    try:
        yield
    finally:
        _direct_listeners.remove(listener)


class SqlCounter:
    """Counts what a SQLAlchemy engine sends: statements (by leading verb), commits,
    rollbacks, connection checkouts. Attach for the measured window only."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.statements: dict[str, int] = {}
        self.commits = 0
        self.rollbacks = 0
        self.autocommit_blocks = 0
        self.checkouts = 0
        self._lock = threading.Lock()

    def _on_execute(self, conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        with self._lock:
            self.statements[verb] = self.statements.get(verb, 0) + 1

    @staticmethod
    def _autocommit(conn: Any) -> bool:
        try:
            return bool(conn.connection.dbapi_connection.autocommit)
        except Exception:
            return False

    def _on_commit(self, conn: Any) -> None:
        auto = self._autocommit(conn)
        with self._lock:
            if auto:
                self.autocommit_blocks += 1  # no BEGIN/COMMIT went to the server
            else:
                self.commits += 1

    def _on_rollback(self, conn: Any) -> None:
        auto = self._autocommit(conn)
        with self._lock:
            if auto:
                self.autocommit_blocks += 1
            else:
                self.rollbacks += 1

    def _on_checkout(self, *_: Any) -> None:
        with self._lock:
            self.checkouts += 1

    def _on_direct(self, statement: str, pooled_autocommit: bool) -> None:
        self._on_execute(None, None, statement, None)
        if pooled_autocommit:
            with self._lock:
                self.autocommit_blocks += 1  # one statement, no BEGIN/COMMIT

    def __enter__(self) -> SqlCounter:
        from sqlalchemy import event

        self._direct = direct_writes(self._on_direct)
        self._direct.__enter__()
        event.listen(self.engine, "before_cursor_execute", self._on_execute)
        event.listen(self.engine, "commit", self._on_commit)
        event.listen(self.engine, "rollback", self._on_rollback)
        event.listen(self.engine.pool, "checkout", self._on_checkout)
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._on_execute)
        event.remove(self.engine, "commit", self._on_commit)
        event.remove(self.engine, "rollback", self._on_rollback)
        event.remove(self.engine.pool, "checkout", self._on_checkout)
        self._direct.__exit__(None, None, None)

    def per(self, n: int) -> dict[str, Any]:
        """Counts divided by ``n`` (steps): statements, transactions, round trips.

        psycopg sends BEGIN before the first statement of a transaction (one round trip)
        and COMMIT/ROLLBACK at its end (one more); an autocommit block sends neither.
        Each statement (an executemany is pipelined) is counted as one round trip. What
        squidmesh pipelines (a locked read with its history; BEGIN with it; a final
        write with its COMMIT) is counted as if sent apart: an upper bound.
        """
        total = sum(self.statements.values())
        transactions = self.commits + self.rollbacks
        return {
            "statements": round(total / n, 2),
            "by_verb": {k: round(v / n, 2) for k, v in sorted(self.statements.items())},
            "transactions": round(transactions / n, 2),
            "autocommit_blocks": round(self.autocommit_blocks / n, 2),
            "round_trips": round((total + 2 * transactions) / n, 2),
            "checkouts": round(self.checkouts / n, 2),
        }


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine spent busy so far (Linux ``/proc/stat``):
    the difference over a window, minus this process's CPU, is mostly PostgreSQL."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / ticks


def _proc_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            rest = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def _backend_pids(db_url: str) -> list[int]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(r[0]) for r in rows]


class CpuWindow:
    """CPU over a measured window: this process (the client), the PostgreSQL backends
    serving ``db_url`` (read from ``/proc``, when the server is local), and the rest of
    the machine (other tenants and PostgreSQL's shared background processes)."""

    def __init__(self, db_url: str | None = None) -> None:
        self.db_url = db_url
        self.client = 0.0
        self.server: float | None = None
        self.others: float | None = None

    def _server_now(self) -> dict[int, float]:
        if self.db_url is None:
            return {}
        found = {}
        for pid in _backend_pids(self.db_url):
            cpu = _proc_cpu_seconds(pid)
            if cpu is not None:
                found[pid] = cpu
        return found

    def __enter__(self) -> CpuWindow:
        self._s0 = self._server_now()
        self._p0 = time.process_time()
        self._m0 = machine_busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client = time.process_time() - self._p0
        m1 = machine_busy_seconds()
        s1 = self._server_now()
        if self.db_url is not None and s1:
            self.server = sum(cpu - self._s0.get(pid, 0.0) for pid, cpu in s1.items())
        if self._m0 is not None and m1 is not None:
            self.others = max(0.0, m1 - self._m0 - self.client - (self.server or 0.0))

    def per(self, n: int, elapsed: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client_cpu_ms_per_step": round(1000 * self.client / n, 3),
            "client_cpu_share": round(self.client / elapsed, 2),
        }
        if self.server is not None:
            out["server_cpu_ms_per_step"] = round(1000 * self.server / n, 3)
        if self.others is not None:
            out["other_cpu_ms_per_step"] = round(1000 * self.others / n, 3)
            used = self.client + (self.server or 0.0) + self.others
            out["machine_cpu_busy_cores"] = round(used / elapsed, 2)
        return out


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(server_url: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "source": source_revision(),
        "packages": {
            name: package_version(name)
            for name in ("squidmesh", "sqlalchemy", "psycopg", "psycopg-binary", "pydantic", "dbos")
        },
    }
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            info["postgresql"] = conn.execute("SELECT version()").fetchone()[0]  # type: ignore[index]
            settings = {}
            for name in ("fsync", "synchronous_commit", "shared_buffers", "wal_sync_method"):
                settings[name] = conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            info["postgresql_settings"] = settings
            host = urlsplit(server_url).hostname
            info["postgresql_host"] = host
    except psycopg.Error as exc:
        info["postgresql"] = f"unreachable: {exc}"
    return info


def source_revision() -> dict[str, Any]:
    """The squidmesh checkout measured: commit and how many files differ from it."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        return {}
    return {"commit": commit or None, "modified_files": len(status.splitlines())}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None
