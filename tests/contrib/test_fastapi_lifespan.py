from __future__ import annotations

# squidmesh.contrib.fastapi.lifespan: what it starts, what it stops, and that a failed
# startup leaves nothing running. On SQLite (one file per test): the behaviour is the
# Mesh's, whatever the database; the FastAPI example's tests run it on PostgreSQL.
import asyncio
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.contrib.fastapi import MeshLifespan, lifespan
from tests.support.waiting import wait_for


@sm.step
def shout(word: str) -> str:
    return word.upper()


@sm.workflow
def echo() -> Any:
    return (yield from shout("hey"))


def _mesh(tmp_path: Path) -> sm.Mesh:
    # auto_migrate=False: only the lifespan's migrate=True may create the tables.
    return sm.Mesh(f"sqlite:///{tmp_path / 'app.db'}", workflows=[echo], auto_migrate=False)


def _worker_threads() -> list[str]:
    # The worker's own threads (the process-wide presence thread outlives any Mesh).
    prefixes = ("squidmesh-worker", "squidmesh-job", "squidmesh-heartbeat", "squidmesh-sweeper")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


def test_it_migrates_runs_a_worker_and_closes_the_mesh(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    before = set(_worker_threads())

    async def app_lifetime() -> None:
        async with lifespan(mesh, migrate=True, worker_options={"poll_interval": 0.05}):
            assert await mesh.migrate_async() == []  # the lifespan applied every file
            assert len(mesh._workers) == 1
            run = await mesh.start_run_async(echo)
            for _ in range(600):
                if (await mesh.inspect_run_async(run.id)).status == "completed":
                    break
                await asyncio.sleep(0.05)
            assert (await mesh.inspect_run_async(run.id)).result == "HEY"

    asyncio.run(app_lifetime())
    assert mesh._workers == []
    wait_for(lambda: set(_worker_threads()) <= before, 10, "the worker's threads to end")


def test_without_migrate_or_worker_it_only_closes(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    mesh.migrate()

    async def app_lifetime() -> None:
        async with lifespan(mesh, worker=False):
            assert mesh._workers == []
            run = await mesh.start_run_async(echo)
            assert (await mesh.explain_run_async(run.id)).reason == "pending_dispatch"

    asyncio.run(app_lifetime())
    assert mesh._async.pool is None  # closed


def test_a_failed_startup_leaves_nothing_running(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)  # not migrated: starting a worker needs the schema

    async def app_lifetime() -> None:
        async with lifespan(mesh):
            raise AssertionError("the app must not start")

    with pytest.raises(sm.SchemaOutOfDateError, match="migrate"):
        asyncio.run(app_lifetime())
    assert mesh._workers == [] and mesh._async.pool is None


def test_fastapi_runs_it_as_the_apps_lifespan(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi import FastAPI

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*httpx2")
        from fastapi.testclient import TestClient

    mesh = _mesh(tmp_path)
    hook = lifespan(mesh, migrate=True, worker=False)
    assert isinstance(hook, MeshLifespan) and hook(object()) is hook
    app = FastAPI(lifespan=hook)

    @app.post("/echo")
    async def start() -> dict[str, Any]:
        run = await mesh.start_run_async(echo)
        return {"id": str(run.id)}

    with TestClient(app) as client:
        run_id = client.post("/echo").json()["id"]
        assert mesh.inspect_run(run_id).status == "pending"
    assert mesh._async.pool is None
