"""``Console``: what every page and action of one console shares.

The Mesh, the host's ``actor(request)``, read-only mode, the title, the Jinja2
environment (autoescaping every template: every value a page shows is escaped unless
the template says otherwise, which it only does for markup rendered by the console
itself) and the static assets, read from the package once and served with a content
hash in their URL.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import weakref
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from squidmesh.analysis import StepGraph, step_graph
from squidmesh.core.definition import WorkflowDefinition
from squidmesh.mesh import Mesh
from squidmesh.types import RunStatus
from squidmesh.web import present, security

__all__ = ["ASSETS", "Console"]

#: Static files shipped in ``squidmesh/web/static`` and their content types.
ASSETS = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

ActorFn = Callable[[Request], Any]


def _segment(value: object) -> str:
    """One URL path segment (a workflow name may hold any character)."""
    return quote(str(value), safe="")


class Console:
    """The state of one mounted console."""

    def __init__(
        self,
        mesh: Mesh,
        *,
        actor: ActorFn | None,
        read_only: bool,
        title: str,
        poll_seconds: float,
        count_limit: int,
    ) -> None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"console() needs a squidmesh Mesh, got {type(mesh).__name__}")
        if actor is not None and not callable(actor):
            raise TypeError("console(actor=...) must be a function of the request (or None)")
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds!r}")
        if count_limit < 1:
            raise ValueError(f"count_limit must be a positive integer, got {count_limit!r}")
        self.mesh = mesh
        self.actor = actor
        self.read_only = bool(read_only)
        self.title = str(title)
        self.poll_ms = int(poll_seconds * 1000)
        self.count_limit = count_limit
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("squidmesh.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            seg=_segment,
            when=present.timestamp,
            iso=present.iso,
            json=present.json_text,
            scrub=present.scrub,
            text=present.value_text,
            short=present.short_id,
            num=lambda n: f"{n:,}",
        )
        self.env.globals.update(
            duration=present.duration,
            action_labels=present.ACTION_LABELS,
            statuses=[s.value for s in RunStatus],
        )
        self.assets: dict[str, bytes] = {}
        self.asset_versions: dict[str, str] = {}
        folder = resources.files("squidmesh.web").joinpath("static")
        for name in ASSETS:
            data = folder.joinpath(name).read_bytes()
            self.assets[name] = data
            self.asset_versions[name] = hashlib.sha256(data).hexdigest()[:12]
        self._graphs: weakref.WeakKeyDictionary[WorkflowDefinition, StepGraph] = (
            weakref.WeakKeyDictionary()
        )

    # ------------------------------------------------------------------ who acts

    async def who(self, request: Request) -> str | None:
        """The person acting, as the host's ``actor(request)`` names them (or None)."""
        if self.actor is None:
            return None
        found = self.actor(request)
        if inspect.isawaitable(found):
            found = await found
        if found is None:
            return None
        text = str(found).strip()
        return text or None

    def can_act(self, who: str | None) -> bool:
        return not self.read_only and who is not None

    def why_read_only(self, who: str | None) -> str:
        if self.read_only:
            return "This console is read-only: it shows runs and offers no actions."
        if who is None:
            return (
                "Read-only: the host names no operator for this request (its actor() "
                "returned None), so no action is offered."
            )
        return ""

    # ------------------------------------------------------------------ graphs

    def graph(self, workflow: WorkflowDefinition) -> StepGraph:
        """The workflow's step graph, analysed once per definition."""
        found = self._graphs.get(workflow)
        if found is None:
            found = self._graphs[workflow] = step_graph(workflow)
        return found

    # ------------------------------------------------------------------ rendering

    def base(self, request: Request) -> str:
        """The path the console is mounted at ("" at the root)."""
        root: str = request.scope.get("root_path", "")
        return root.rstrip("/")

    def asset(self, request: Request, name: str) -> str:
        return f"{self.base(request)}/static/{name}?v={self.asset_versions[name]}"

    def context(self, request: Request, who: str | None, token: str) -> dict[str, Any]:
        base = self.base(request)
        return {
            "title": self.title,
            "base": base,
            "who": who,
            "can_act": self.can_act(who),
            "read_only_reason": self.why_read_only(who),
            "csrf": token,
            "csrf_field": security.CSRF_FIELD,
            "css": self.asset(request, "console.css"),
            "js": self.asset(request, "console.js"),
            "icon": self.asset(request, "favicon.svg"),
            "poll_ms": self.poll_ms,
            "live_url": "",
            "nav": "",
        }

    def render(self, template: str, **values: Any) -> str:
        return self.env.get_template(template).render(**values)

    def page(
        self,
        request: Request,
        template: str,
        values: dict[str, Any],
        *,
        token: str,
        new_token: bool,
        status_code: int = 200,
    ) -> Response:
        response = HTMLResponse(self.render(template, **values), status_code=status_code)
        if new_token:
            security.remember_token(request, response, token)
        return response

    @staticmethod
    def query(**params: Any) -> str:
        """A query string of the parameters that are set (``?a=1&b=2``, or "")."""
        kept = {k: v for k, v in params.items() if v not in (None, "")}
        return "?" + urlencode(kept) if kept else ""


def live_json(version: str, regions: dict[str, str]) -> Response:
    """The body a page's script polls: a version and the HTML of each live region,
    with a short hash so the script replaces only what changed."""
    body = {
        "version": version,
        "regions": {
            name: {"hash": region_hash(html), "html": html} for name, html in regions.items()
        },
    }
    return Response(json.dumps(body), media_type="application/json")


def region_hash(html: str) -> str:
    return hashlib.sha256(html.encode()).hexdigest()[:16]


def version_of(updated_at: datetime, status: str) -> str:
    """A short, URL-safe token that changes whenever the run changes."""
    return hashlib.sha256(f"{updated_at.isoformat()}|{status}".encode()).hexdigest()[:16]
