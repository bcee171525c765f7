from __future__ import annotations

# Fixtures for the worker tests: a fresh migrated PostgreSQL database with the host table
# ``step_log``, and ``workers``, a factory of real ``squidmesh worker`` processes running
# ``tests.worker.apps:mesh`` that are always killed at teardown.
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

import squidmesh as sm
from tests.support import postgres
from tests.worker import apps

REPO_ROOT = Path(__file__).resolve().parents[2]
SQUIDMESH = Path(sys.executable).with_name("squidmesh")


@dataclass
class Database:
    libpq_url: str
    url: str  # the SQLAlchemy form, what squidmesh takes
    _conn: Any = None

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.libpq_url, autocommit=True)
        return list(self._conn.execute(sql, params).fetchall())

    def scalar(self, sql: str, params: Any = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def listening_sessions(self) -> int:
        """Sessions of this database that have run a LISTEN and sit idle (listening)."""
        return int(
            self.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle' AND query LIKE 'LISTEN %'"
            )
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@pytest.fixture
def database(
    pg_server_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Database]:
    """A fresh database: squidmesh migrated, ``step_log`` created, dropped afterwards.

    ``SQUIDMESH_TEST_URL`` points at it, so steps run in this process log there too.
    """
    libpq_url = postgres.create_database(pg_server_url, f"wk_{request.node.name}")
    db = Database(libpq_url, postgres.sqlalchemy_url(libpq_url))
    try:
        with sm.Mesh(db.url) as mesh:
            mesh.migrate()
        apps.create_log_table(libpq_url)
        monkeypatch.setenv(apps.URL_ENV, db.url)
        yield db
    finally:
        db.close()
        apps.close_connections()
        postgres.drop_database(libpq_url)


@pytest.fixture
def mesh_on(database: Database) -> Iterator[Callable[..., sm.Mesh]]:
    """Build in-process Meshes on the test database (closed at teardown)."""
    made: list[sm.Mesh] = []

    def make(**kwargs: Any) -> sm.Mesh:
        mesh = sm.Mesh(database.url, workflows=apps.WORKFLOWS, **kwargs)
        made.append(mesh)
        return mesh

    yield make
    for mesh in reversed(made):
        mesh.close()


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def wait_started(self, timeout: float = 20.0) -> None:
        """Wait until the worker announced itself on stderr (its loop is starting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "squidmesh: worker " in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited early ({self.proc.returncode}):\n{self.output()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"worker did not start within {timeout}s:\n{self.output()}")


class Workers:
    def __init__(self, database: Database, tmp_path: Path) -> None:
        self.database = database
        self.tmp_path = tmp_path
        self.started: list[WorkerProcess] = []

    def start(
        self, *args: str, concurrency: int = 4, wrapper: tuple[str, ...] = ()
    ) -> WorkerProcess:
        env = dict(os.environ)
        env[apps.URL_ENV] = self.database.url
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env.pop("SQUIDMESH_APP", None)
        env.pop("SQUIDMESH_DATABASE_URL", None)
        log_path = self.tmp_path / f"worker-{len(self.started)}.log"
        argv = [
            *wrapper,  # e.g. ("faketime", "-f", "+40s"): run the worker under another clock
            str(SQUIDMESH),
            "--app",
            "tests.worker.apps:mesh",
            "worker",
            "--concurrency",
            str(concurrency),
            *args,
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(proc, log_path, argv)
        self.started.append(worker)
        return worker

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM every live worker and wait for it to drain and exit."""
        for worker in self.started:
            worker.signal(signal.SIGTERM)
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.wait(timeout)

    def kill_all(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.proc.kill()
        for worker in self.started:
            try:
                worker.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - the kernel will reap it
                pass

    def outputs(self) -> str:
        return "\n".join(
            f"--- worker {w.pid} (exit {w.proc.poll()}):\n{w.output()[-3000:]}"
            for w in self.started
        )


@pytest.fixture
def workers(database: Database, tmp_path: Path) -> Iterator[Workers]:
    factory = Workers(database, tmp_path)
    try:
        yield factory
    finally:
        factory.kill_all()
