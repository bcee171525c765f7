"""The FastAPI application: HTTP endpoints over one ``sm.Mesh`` on PostgreSQL, async.

Every endpoint is an ``async def`` that awaits the Mesh's ``_async`` twins, so a request
waiting on the database never holds up the event loop (nor FastAPI's thread pool).

- ``GET /health``: 200 ``{"status": "ok"}`` when the database answers, else 503. No login.

Everything under ``/runs`` needs HTTP Basic credentials of one of the app's ``users``;
the signed-in name is the actor squidmesh records (never a field of the request body):

- ``POST /runs/{workflow}`` starts a run; the JSON body is the payload (``?trigger=``
  picks a trigger, an ``Idempotency-Key`` header makes retries safe). 201 with the run.
- ``GET /runs?status=&workflow=&limit=&before=`` lists runs newest first; ``next`` is the
  ``before`` of the next page.
- ``GET /runs/{run_id}`` inspects a run with its history (step runs, attempts, audit).
- ``GET /runs/{run_id}/explain`` says why the run is where it is and what can be done.
- ``POST /runs/{run_id}/approve`` / ``/reject`` with ``{"comment", "metadata"}``.
- ``POST /runs/{run_id}/unblock`` with ``{"comment", "data"}`` (all optional).
- ``POST /runs/{run_id}/events/{name}`` with ``{"data"}`` delivers an event.
- ``POST /runs/{run_id}/cancel`` with ``{"reason", "compensate"}``.
- ``POST /runs/{run_id}/resume`` re-activates a suspended run.

squidmesh errors become HTTP errors carrying squidmesh's message: unknown runs and
workflows 404, actions the run's state does not allow 409, invalid payloads and reviews
422 (with the ``PayloadError`` fields), an unavailable database 503. Responses never
carry a traceback or a path of the server: recorded errors are shown without their
``traceback``, and an unexpected exception is logged and answered with a bare 500.

The operator console (``squidmesh.web.console``) is mounted at ``/ops/`` behind the same
login. The steps run in a worker thread that ``squidmesh.contrib.fastapi.lifespan``
starts and stops with the app; workers in other processes (``squidmesh --app ...
worker``) can share the same database.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

import squidmesh as sm
from examples.order_fulfilment import fulfil_order, fulfil_order_or_apologise
from examples.ring_errand import ring_errand
from squidmesh.contrib.fastapi import lifespan

__all__ = ["WORKFLOWS", "app_from_env", "build_mesh", "create_app", "public"]

WORKFLOWS = [ring_errand, fulfil_order, fulfil_order_or_apologise]

log = logging.getLogger("examples.fastapi_app")


class Review(BaseModel):
    """The body of approve and reject (may be omitted)."""

    comment: str | None = None
    metadata: dict[str, Any] | None = None


class Unblock(BaseModel):
    """The body of unblock (may be omitted)."""

    comment: str | None = None
    data: Any = None


class Event(BaseModel):
    """The body of an event (may be omitted)."""

    data: Any = None


class Cancel(BaseModel):
    """The body of cancel (may be omitted)."""

    reason: str | None = None
    compensate: bool = False


def build_mesh(database_url: str) -> sm.Mesh:
    """The application's one Mesh: runs live in its database, in the schema "squidmesh"."""
    return sm.Mesh(database_url, workflows=WORKFLOWS)


def public(value: Any) -> Any:
    """``value`` as JSON for a client: recorded errors lose their ``traceback`` (the
    server's file paths and code stay on the server; ``squidmesh runs history`` and the
    console show them to operators)."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if k != "traceback"}
    if isinstance(value, list):
        return [public(item) for item in value]
    return value


def _json(value: Any) -> Any:
    return public(jsonable_encoder(value))


def _status_code(exc: sm.SquidmeshError) -> int:
    if isinstance(exc, (sm.RunNotFoundError, sm.UnknownWorkflowError)):
        return 404
    if isinstance(exc, (sm.InvalidTransitionError, sm.UnsafeReplayError)):
        return 409
    if isinstance(
        exc, (sm.PayloadError, sm.ReviewError, sm.UnknownTriggerError, sm.InvalidArgumentError)
    ):
        return 422
    if isinstance(exc, sm.StorageError):
        return 503
    return 500


def _error_body(exc: sm.SquidmeshError) -> dict[str, Any]:
    if isinstance(exc, sm.StorageError):
        # The driver's message may name hosts and files: say what, not where.
        return {"error": type(exc).__name__, "message": "the database is unavailable"}
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


_basic = HTTPBasic(realm="squidmesh example")


def signed_in(users: Mapping[str, str], credentials: HTTPBasicCredentials) -> str | None:
    """The user named by ``credentials`` when the password is right, else None."""
    expected = users.get(credentials.username)
    # Compare even for unknown names, so the timing does not tell which names exist.
    given = credentials.password.encode()
    if not hmac.compare_digest(given, (expected or secrets.token_hex(16)).encode()):
        return None
    return credentials.username if expected is not None else None


def current_user(
    request: Request, credentials: Annotated[HTTPBasicCredentials, Depends(_basic)]
) -> str:
    """The signed-in user: squidmesh records this name as the actor."""
    name = signed_in(request.app.state.users, credentials)
    if name is None:
        raise HTTPException(
            status_code=401,
            detail="unknown user or wrong password",
            headers={"WWW-Authenticate": 'Basic realm="squidmesh example"'},
        )
    return name


#: an endpoint parameter ``user: User`` requires a signed-in user and is their name
User = Annotated[str, Depends(current_user)]


def create_app(
    database_url: str,
    *,
    users: Mapping[str, str],
    migrate: bool = True,
    worker: bool = True,
    worker_options: dict[str, Any] | None = None,
) -> FastAPI:
    """A FastAPI app serving the Ring Errand and the order saga from ``database_url``.

    ``users`` (name -> password) may call the API and open the console at ``/ops/``
    (HTTP Basic: a demo; a real host plugs in its own login). ``migrate`` runs
    ``mesh.migrate()`` at startup; ``worker`` starts a worker thread for the app's
    lifetime, with ``worker_options`` passed to ``mesh.worker()``.
    """
    mesh = build_mesh(database_url)
    accounts = dict(users)
    app = FastAPI(
        title="squidmesh example host",
        lifespan=lifespan(mesh, worker=worker, migrate=migrate, worker_options=worker_options),
    )
    app.state.mesh = mesh
    app.state.users = accounts

    @app.exception_handler(sm.SquidmeshError)
    async def squidmesh_error(request: Request, exc: sm.SquidmeshError) -> JSONResponse:
        return JSONResponse(_error_body(exc), status_code=_status_code(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "InternalError", "message": "internal error"}, 500)

    @app.get("/health")
    async def health() -> JSONResponse:
        try:
            await mesh.list_runs_async(limit=1)
        except sm.StorageError:
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    @app.post("/runs/{workflow}", status_code=201)
    async def start_run(
        workflow: str,
        user: User,
        payload: Annotated[dict[str, Any] | None, Body()] = None,
        trigger: str | None = None,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> Any:
        run = await mesh.start_run_async(
            workflow, payload, trigger=trigger, idempotency_key=idempotency_key, actor=user
        )
        return _json(run)

    @app.get("/runs")
    async def list_runs(
        user: User,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> Any:
        cursor = await mesh.inspect_run_async(before) if before else None
        runs = await mesh.list_runs_async(
            status=status, workflow=workflow, limit=limit, before=cursor
        )
        following = str(runs[-1].id) if len(runs) == limit else None
        return {"runs": _json(runs), "next": following}

    @app.get("/runs/{run_id}")
    async def inspect_run(run_id: str, user: User) -> Any:
        return _json(await mesh.inspect_run_async(run_id, include_history=True))

    @app.get("/runs/{run_id}/explain")
    async def explain_run(run_id: str, user: User) -> Any:
        return _json(await mesh.explain_run_async(run_id))

    @app.post("/runs/{run_id}/approve")
    async def approve_run(run_id: str, user: User, review: Review | None = None) -> Any:
        review = review or Review()
        run = await mesh.approve_run_async(
            run_id, actor=user, comment=review.comment, metadata=review.metadata
        )
        return _json(run)

    @app.post("/runs/{run_id}/reject")
    async def reject_run(run_id: str, user: User, review: Review | None = None) -> Any:
        review = review or Review()
        run = await mesh.reject_run_async(
            run_id, actor=user, comment=review.comment, metadata=review.metadata
        )
        return _json(run)

    @app.post("/runs/{run_id}/unblock")
    async def unblock_run(run_id: str, user: User, body: Unblock | None = None) -> Any:
        body = body or Unblock()
        run = await mesh.unblock_run_async(run_id, actor=user, comment=body.comment, data=body.data)
        return _json(run)

    @app.post("/runs/{run_id}/events/{name}")
    async def send_event(run_id: str, name: str, user: User, body: Event | None = None) -> Any:
        body = body or Event()
        return _json(await mesh.send_event_async(run_id, name, body.data, actor=user))

    @app.post("/runs/{run_id}/cancel")
    async def cancel_run(run_id: str, user: User, body: Cancel | None = None) -> Any:
        body = body or Cancel()
        run = await mesh.cancel_run_async(
            run_id, actor=user, reason=body.reason, compensate=body.compensate
        )
        return _json(run)

    @app.post("/runs/{run_id}/resume")
    async def resume_run(run_id: str, user: User) -> Any:
        return _json(await mesh.resume_run_async(run_id, actor=user))

    # The operator console, behind the same login. Mounted apps do not run FastAPI
    # dependencies: a middleware guards the mount, and ``actor`` names the user.
    from squidmesh.web import console

    def console_user(request: Request) -> str | None:
        credentials = _basic_credentials(request)
        return signed_in(accounts, credentials) if credentials is not None else None

    @app.middleware("http")
    async def users_only(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/ops") and console_user(request) is None:
            return JSONResponse(
                {"error": "sign in"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="squidmesh example"'},
            )
        return await call_next(request)

    app.mount("/ops", console(mesh, actor=console_user))
    return app


def _basic_credentials(request: Request) -> HTTPBasicCredentials | None:
    import base64
    import binascii

    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, separator, password = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not separator:
        return None
    return HTTPBasicCredentials(username=name, password=password)


def app_from_env() -> FastAPI:
    """``uvicorn --factory examples.fastapi_app:app_from_env``: the database URL comes
    from ``SQUIDMESH_DATABASE_URL``, the users from ``SQUIDMESH_EXAMPLE_USERS``
    (``name:password,name:password``)."""
    url = os.environ.get("SQUIDMESH_DATABASE_URL")
    if not url:
        raise RuntimeError("set SQUIDMESH_DATABASE_URL to a PostgreSQL URL")
    pairs = [p for p in os.environ.get("SQUIDMESH_EXAMPLE_USERS", "").split(",") if p]
    users = dict(pair.partition(":")[::2] for pair in pairs)
    if not users or not all(users.values()):
        raise RuntimeError("set SQUIDMESH_EXAMPLE_USERS to name:password[,name:password...]")
    return create_app(url, users=users)
