"""Fixtures of the broker-executor tests: a migrated PostgreSQL database per module and
real broker worker processes, always stopped in teardown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa

import squidmesh as sm
from squidmesh.runtime.worker import wait_until
from tests.contrib import flows
from tests.support import postgres

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def contrib_database(pg_server_url: str) -> Iterator[str]:
    """libpq URL of a database with squidmesh's schema, shared by one test module."""
    url = postgres.create_database(pg_server_url, "contrib")
    try:
        with sm.Mesh(url, workflows=[flows.parcel]) as mesh:
            mesh.migrate()
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture(scope="module")
def queue() -> str:
    """A queue no other test run shares (brokers may be shared)."""
    return f"sqm-test-{uuid.uuid4().hex[:10]}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class WorkerProcess:
    """A broker worker as a child process; its output goes to a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a warm shutdown
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def wait_for_run(mesh: sm.Mesh, run_id: Any, worker: WorkerProcess, timeout: float = 30) -> sm.Run:
    """Wait until the run completes; on a timeout, fail with the worker's output."""

    def ended() -> bool:
        return mesh.inspect_run(run_id).status in ("completed", "failed", "cancelled")

    if not wait_until(ended, timeout, interval=0.1):
        pytest.fail(
            f"run {run_id} did not finish in {timeout}s: {mesh.explain_run(run_id)}\n"
            f"--- worker exit code {worker.process.poll()}, output:\n{worker.output()}"
        )
    return mesh.inspect_run(run_id, include_history=True)


def job_rows(database_url: str) -> list[tuple[Any, ...]]:
    """Every row of squidmesh's jobs table: (kind, run_id, worker, lease_until)."""
    engine = sa.create_engine(postgres.sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT kind, run_id, worker, lease_until FROM squidmesh.squidmesh_jobs"
            )
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()


def assert_parcel_completed(run: sm.Run, item: str) -> None:
    """The parcel workflow ran to the end in a worker process, through its sleep and retry."""
    assert run.status == "completed", run
    assert run.result["packed"] == f"packed {item}"
    assert run.result["charged"] == f"charged {item} on attempt 2"
    assert run.result["shipped"] == item
    assert run.result["pid"] != os.getpid()  # performed by the broker's worker
    assert run.step_runs is not None
    charge = next(s for s in run.step_runs if s.name == "charge")
    assert [a.status for a in charge.attempts] == ["failed", "completed"]
    # the 1 s sleep and the 1 s retry backoff were delayed deliveries
    assert (run.updated_at - run.created_at).total_seconds() >= 2
