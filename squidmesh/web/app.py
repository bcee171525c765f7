"""``console(mesh, ...)``: the Starlette application and its routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from squidmesh.mesh import Mesh
from squidmesh.web import actions, pages, security
from squidmesh.web.base import ASSETS, ActorFn, Console

__all__ = ["console"]

Handler = Callable[[Console, Request], Awaitable[Response]]


def console(
    mesh: Mesh,
    *,
    actor: ActorFn | None = None,
    read_only: bool = False,
    title: str = "squidmesh",
    poll_seconds: float = 2.0,
    count_limit: int = 1_000,
) -> Starlette:
    """The operator console of ``mesh``, an ASGI application to mount under any path.

    ``actor(request)`` (a function, or a coroutine function, of the Starlette request)
    names the person acting, from the host's own authentication; it is recorded on
    every action. When it returns None, or with ``read_only=True``, no action is offered
    and every action is refused with 403. ``poll_seconds`` is how often an open page
    asks for changes; ``count_limit`` caps each status count (shown as "1,000+"), so
    counting stays cheap however many runs are stored.
    """
    state = Console(
        mesh,
        actor=actor,
        read_only=read_only,
        title=title,
        poll_seconds=poll_seconds,
        count_limit=count_limit,
    )

    def bind(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await handler(state, request)

        return endpoint

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise HTTPException(404)
        return Response(
            state.assets[name],
            media_type=ASSETS[name],
            headers={"cache-control": "public, max-age=31536000, immutable"},
        )

    async def not_found(request: Request, exc: Any) -> Response:
        status = getattr(exc, "status_code", 404)
        return PlainTextResponse(
            "Not Found" if status == 404 else "Method Not Allowed", status_code=status
        )

    routes = [
        Route("/", bind(pages.runs_page), methods=["GET"], name="runs"),
        Route("/runs/{run_id}", bind(pages.run_page), methods=["GET"], name="run"),
        Route(
            "/runs/{run_id}/actions/{action}",
            bind(actions.run_action),
            methods=["POST"],
            name="action",
        ),
        Route("/workflows", bind(pages.workflows_page), methods=["GET"], name="workflows"),
        Route("/workflows/{name}", bind(pages.workflow_page), methods=["GET"], name="workflow"),
        Route("/workflows/{name}/start", bind(actions.start_run), methods=["POST"], name="start"),
        Route("/queues", bind(pages.queues_page), methods=["GET"], name="queues"),
        Route("/live/runs", bind(pages.runs_live), methods=["GET"], name="runs_live"),
        Route("/live/queues", bind(pages.queues_live), methods=["GET"], name="queues_live"),
        Route("/live/runs/{run_id}", bind(pages.run_live), methods=["GET"], name="run_live"),
        Route("/static/{name}", static, methods=["GET"], name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(security.SecurityHeaders)],
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.console = state
    return app
