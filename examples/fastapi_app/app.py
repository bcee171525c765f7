"""The FastAPI application: HTTP endpoints over one ``sm.Mesh`` on PostgreSQL.

- ``POST /runs/{workflow}`` starts a run; the JSON body is the payload (``?trigger=``
  picks a trigger, an ``Idempotency-Key`` header makes retries safe). 201 with the run.
- ``GET /runs/{run_id}`` inspects a run with its history (step runs, attempts, audit).
- ``GET /runs/{run_id}/explain`` says why the run is where it is and what can be done.
- ``POST /runs/{run_id}/approve`` / ``/reject`` with ``{"actor", "comment"}``.
- ``POST /runs/{run_id}/unblock`` with ``{"actor", "comment", "data"}`` (all optional).

squidmesh errors become HTTP errors carrying squidmesh's message: unknown runs and
workflows 404, actions the run's state does not allow 409, invalid payloads and reviews
422 (with the ``PayloadError`` fields). The endpoints are plain ``def`` functions because
squidmesh's API is blocking: FastAPI runs them in its thread pool.

With ``operators={"name": "password", ...}`` the operator console
(``squidmesh.web.console``) is mounted at ``/ops/`` behind the app's own (demo) HTTP Basic
authentication; the signed-in name is the actor recorded on every action.

The steps themselves run in a worker thread that the app's lifespan starts
(``mesh.worker()``) and stops on shutdown (``mesh.close()`` drains it). Workers in other
processes (``squidmesh --app ... worker``) can share the same database.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Body, FastAPI, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import squidmesh as sm
from examples.order_fulfilment import fulfil_order, fulfil_order_or_apologise
from examples.ring_errand import ring_errand

__all__ = ["WORKFLOWS", "app_from_env", "build_mesh", "create_app"]

WORKFLOWS = [ring_errand, fulfil_order, fulfil_order_or_apologise]


class Review(BaseModel):
    """The body of approve and reject."""

    actor: str
    comment: str | None = None
    metadata: dict[str, Any] | None = None


class Unblock(BaseModel):
    """The body of unblock (may be omitted)."""

    actor: str | None = None
    comment: str | None = None
    data: Any = None


def build_mesh(database_url: str) -> sm.Mesh:
    """The application's one Mesh: runs live in its database, in the schema "squidmesh"."""
    return sm.Mesh(database_url, workflows=WORKFLOWS)


def _status_code(exc: sm.SquidmeshError) -> int:
    if isinstance(exc, (sm.RunNotFoundError, sm.UnknownWorkflowError)):
        return 404
    if isinstance(exc, (sm.InvalidTransitionError, sm.UnsafeReplayError)):
        return 409
    if isinstance(exc, (sm.PayloadError, sm.ReviewError, sm.UnknownTriggerError)):
        return 422
    if isinstance(exc, sm.StorageError):
        return 503
    return 500


def _error_body(exc: sm.SquidmeshError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, sm.PayloadError):
        body["missing_fields"] = exc.missing_fields
        body["unknown_fields"] = exc.unknown_fields
        body["invalid_types"] = exc.invalid_types
    elif isinstance(exc, sm.InvalidTransitionError):
        body["status"] = exc.status
        body["action"] = exc.action
    elif isinstance(exc, sm.UnsafeReplayError):
        body["steps"] = list(exc.steps)
    return body


def basic_user(request: Request, operators: Mapping[str, str]) -> str | None:
    """The operator named by the request's HTTP Basic credentials, if they are right.

    A demo: a real host asks its own login (sessions, SSO, a proxy) instead."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, _, password = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    expected = operators.get(name)
    if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
        return None
    return name


def create_app(
    database_url: str,
    *,
    migrate: bool = True,
    worker: bool = True,
    worker_options: dict[str, Any] | None = None,
    operators: Mapping[str, str] | None = None,
) -> FastAPI:
    """A FastAPI app serving the Ring Errand and the order saga from ``database_url``.

    ``migrate`` runs ``mesh.migrate()`` at startup (idempotent and safe with several
    replicas; larger deployments run ``squidmesh migrate`` as a deploy step instead).
    ``worker`` starts a worker thread for the app's lifetime, with ``worker_options``
    passed to ``mesh.worker()``. ``operators`` (name -> password) mounts the operator
    console at ``/ops/`` for them.
    """
    mesh = build_mesh(database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate:
            mesh.migrate()
        if worker:
            mesh.worker(**(worker_options or {}))
        try:
            yield
        finally:
            mesh.close()  # stops the worker gracefully, then releases the connections

    app = FastAPI(title="squidmesh example host", lifespan=lifespan)
    app.state.mesh = mesh

    @app.exception_handler(sm.SquidmeshError)
    def squidmesh_error(request: Request, exc: sm.SquidmeshError) -> JSONResponse:
        return JSONResponse(_error_body(exc), status_code=_status_code(exc))

    @app.post("/runs/{workflow}", status_code=201)
    def start_run(
        workflow: str,
        payload: dict[str, Any] | None = Body(default=None),  # noqa: B008 - FastAPI idiom
        trigger: str | None = None,
        idempotency_key: str | None = Header(default=None),
    ) -> Any:
        run = mesh.start_run(workflow, payload, trigger=trigger, idempotency_key=idempotency_key)
        return jsonable_encoder(run)

    @app.get("/runs/{run_id}")
    def inspect_run(run_id: str) -> Any:
        return jsonable_encoder(mesh.inspect_run(run_id, include_history=True))

    @app.get("/runs/{run_id}/explain")
    def explain_run(run_id: str) -> Any:
        return jsonable_encoder(mesh.explain_run(run_id))

    @app.post("/runs/{run_id}/approve")
    def approve_run(run_id: str, review: Review) -> Any:
        run = mesh.approve_run(
            run_id, actor=review.actor, comment=review.comment, metadata=review.metadata
        )
        return jsonable_encoder(run)

    @app.post("/runs/{run_id}/reject")
    def reject_run(run_id: str, review: Review) -> Any:
        run = mesh.reject_run(
            run_id, actor=review.actor, comment=review.comment, metadata=review.metadata
        )
        return jsonable_encoder(run)

    @app.post("/runs/{run_id}/unblock")
    def unblock_run(run_id: str, body: Unblock | None = None) -> Any:
        body = body or Unblock()
        run = mesh.unblock_run(run_id, actor=body.actor, comment=body.comment, data=body.data)
        return jsonable_encoder(run)

    if operators:
        from squidmesh.web import console

        staff = dict(operators)

        @app.middleware("http")
        async def operators_only(request: Request, call_next: Any) -> Any:
            # Mounted apps do not run FastAPI dependencies: guard the mount here.
            if request.url.path.startswith("/ops") and basic_user(request, staff) is None:
                return JSONResponse(
                    {"error": "sign in as an operator"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="squidmesh operators"'},
                )
            return await call_next(request)

        app.mount("/ops", console(mesh, actor=lambda request: basic_user(request, staff)))

    return app


def app_from_env() -> FastAPI:
    """``uvicorn --factory examples.fastapi_app:app_from_env``: the URL comes from
    ``SQUIDMESH_DATABASE_URL``."""
    url = os.environ.get("SQUIDMESH_DATABASE_URL")
    if not url:
        raise RuntimeError("set SQUIDMESH_DATABASE_URL to a PostgreSQL URL")
    return create_app(url)
