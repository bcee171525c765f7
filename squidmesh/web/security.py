"""What keeps the console's pages and actions safe: headers, CSRF and origin checks.

- Every response carries a Content-Security-Policy that allows scripts, styles, images
  and fetches from the console's own origin only (no inline script or style, no
  ``eval``), forbids framing and restricts form targets to the origin; plus
  ``nosniff``, ``Referrer-Policy: same-origin`` and ``Cache-Control: no-store`` on pages.
- CSRF: a double-submit token. Every page sets a random token in a ``SameSite=Strict``,
  ``HttpOnly`` cookie and puts the same token in each form; a POST must send both, equal.
  A cross-site page can neither read the cookie nor guess the token.
- Origin: a POST whose ``Sec-Fetch-Site`` says another site, or whose ``Origin`` (else
  ``Referer``) names another host than the one the request was sent to, is refused
  before anything else, token or not. Reverse proxies must pass the ``Host`` header on.

A refused POST gets 403 and changes nothing: checks run before the action is looked at.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "CSP",
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "SecurityHeaders",
    "csrf_token",
    "refusal",
    "remember_token",
]

CSRF_COOKIE = "squidmesh_csrf"
CSRF_FIELD = "csrf"

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)

_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SecurityHeaders:
    """ASGI middleware adding the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in _HEADERS if h[0] not in present)
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def csrf_token(request: Request) -> tuple[str, bool]:
    """The request's CSRF token, and whether it is new (to be set as a cookie)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if _well_formed(current):
        return current, False
    return secrets.token_urlsafe(32), True


def _well_formed(token: str) -> bool:
    return 40 <= len(token) <= 64 and all(c.isalnum() or c in "-_" for c in token)


def remember_token(request: Request, response: Response, token: str) -> None:
    """Set the CSRF cookie, scoped to the console's mount path."""
    path = request.scope.get("root_path", "") or "/"
    response.set_cookie(
        CSRF_COOKIE,
        token,
        path=path,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _netloc(value: str, scheme: str) -> str:
    host = value.strip().lower()
    for suffix, default in ((":80", "http"), (":443", "https")):
        if host.endswith(suffix) and scheme == default:
            host = host[: -len(suffix)]
    return host


def _cross_site(request: Request) -> str | None:
    """Why the request comes from another site, or None."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"the browser says it comes from a {site} page"
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if not referer:
            return None  # not sent by a browser page (browsers send Origin on POST)
        origin = referer
    if origin == "null":
        return "it comes from an opaque origin"
    parts = urlsplit(origin)
    own = _netloc(request.headers.get("host", ""), request.url.scheme)
    if not parts.netloc or _netloc(parts.netloc, parts.scheme) != own:
        return "it comes from another origin"
    return None


def refusal(request: Request, form: MutableMapping[str, Any] | Any) -> str | None:
    """Why a POST must be refused as a cross-site request, or None when it may go on."""
    cross = _cross_site(request)
    if cross is not None:
        return f"Refused: {cross}. Act from the console's own pages."
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get(CSRF_FIELD, "") if form is not None else ""
    if not isinstance(sent, str) or not _well_formed(cookie) or not _well_formed(sent):
        return "Refused: the form's security token is missing. Reload the page and try again."
    if not hmac.compare_digest(cookie.encode(), sent.encode()):
        return "Refused: the form's security token does not match. Reload the page and retry."
    return None
