from __future__ import annotations

# The console's security model through its ASGI app: escaping of untrusted values,
# the Content-Security-Policy and no inline script on any page, cross-site POSTs
# refused (no token, a wrong token, another origin), read-only mode and an actor of
# None, no GET with side effects.
import re
from html.parser import HTMLParser
from typing import Any

import pytest

import squidmesh as sm
from tests.runtime.support import snapshot
from tests.web import flows
from tests.web.conftest import Console, TestClient, post, token

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>"\'&'


class Scripts(HTMLParser):
    """Every script element and inline event handler / style attribute of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.scripts: list[dict[str, str]] = []
        self.inline: list[str] = []
        self.in_script = False
        self.script_text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts.append(found)
            self.in_script = True
        for name, value in found.items():
            if name.startswith("on") or name == "style":
                self.inline.append(f"{tag} {name}={value}")
            if value.strip().lower().startswith("javascript:"):
                self.inline.append(f"{tag} {name}={value}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.script_text.append(data)


def every_page(env: Console, client: TestClient) -> dict[str, Any]:
    """One response of each page kind, with runs in many states behind them."""
    paused = env.mesh.start_run(flows.review, {"item": XSS}, idempotency_key=XSS)
    env.mesh.unblock_run(paused.id, actor=XSS, comment=XSS, data={"note": XSS})
    env.mesh.approve_run(paused.id, actor=XSS, comment=XSS)
    waiting = env.mesh.start_run(flows.waiter)
    env.mesh.send_event(waiting.id, "go", {"evil": XSS})
    flows.FLAGS["bug"] = True
    stuck = env.mesh.start_run(flows.buggy)
    rocket = env.mesh.start_run(flows.rocket)
    pages = {
        "runs": client.get("/"),
        "search": client.get("/", params={"q": XSS}),
        "run": client.get(f"/runs/{paused.id}"),
        "waiter": client.get(f"/runs/{waiting.id}"),
        "suspended": client.get(f"/runs/{stuck.id}"),
        "irreversible": client.get(f"/runs/{rocket.id}"),
        "workflows": client.get("/workflows"),
        "workflow": client.get("/workflows/review"),
        "missing run": client.get("/runs/" + "0" * 8 + "-0000-4000-8000-000000000000"),
        "missing workflow": client.get("/workflows/" + XSS),
        "confirm": post(
            client, f"/runs/{rocket.id}/actions/replay_run", {"allow_irreversible": "yes"}
        ),
        "refused": client.post(f"/runs/{paused.id}/actions/cancel_run", data={}),
    }
    return pages


def test_untrusted_values_are_shown_escaped(env: Console) -> None:
    client = env.client()
    pages = every_page(env, client)
    for name in ("runs", "search", "run", "waiter"):
        text = pages[name].text
        assert "<script>alert" not in text, name
        assert "<img src=x" not in text, name
    run_page = pages["run"].text
    # Payload, unblock data, comments and the actor come back as text, escaped.
    assert "&lt;script&gt;alert(" in run_page
    assert "&lt;img src=x onerror=alert(1)&gt;" in run_page
    assert "&lt;script&gt;alert" in pages["waiter"].text  # event data
    assert "&lt;script&gt;alert" in pages["search"].text  # the search box echo
    live = client.get("/live/runs").json()
    assert "<script>alert" not in str(live)


def test_every_page_has_the_csp_and_no_inline_script(env: Console) -> None:
    client = env.client()
    for name, response in every_page(env, client).items():
        csp = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, name
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, name
        assert response.headers["x-content-type-options"] == "nosniff", name
        found = Scripts(response.text)
        assert found.inline == [], (name, found.inline)
        assert found.script_text == [], name
        for script in found.scripts:
            assert re.fullmatch(r"/static/console\.js\?v=[0-9a-f]{12}", script["src"]), name


def test_no_absolute_server_paths_in_pages(env: Console) -> None:
    client = env.client()
    import os
    from pathlib import Path

    roots = {str(Path(__file__).resolve().parents[2]), os.getcwd(), os.path.expanduser("~")}
    for name, response in every_page(env, client).items():
        for root in roots:
            assert root + "/" not in response.text, (name, root)


@pytest.mark.parametrize(
    "attack",
    ["no token", "wrong token", "foreign origin", "foreign referer", "cross-site fetch", "null"],
)
def test_cross_site_posts_are_refused_and_change_nothing(env: Console, attack: str) -> None:
    run = env.mesh.start_run(flows.review, {"item": "rope"})
    client = env.client()
    good = token(client)
    data: dict[str, str] = {"csrf": good}
    headers: dict[str, str] = {}
    if attack == "no token":
        data = {}
    elif attack == "wrong token":
        data = {"csrf": "A" * 43}
    elif attack == "foreign origin":
        headers["origin"] = "https://evil.example"
    elif attack == "foreign referer":
        headers["referer"] = "https://evil.example/page"
    elif attack == "cross-site fetch":
        headers["sec-fetch-site"] = "cross-site"
    else:
        headers["origin"] = "null"
    before = snapshot(env.mesh.store)
    response = client.post(
        f"/runs/{run.id}/actions/unblock_run", data=data, headers=headers, follow_redirects=False
    )
    assert response.status_code == 403
    assert "Refused" in response.text and "Nothing was changed" in response.text
    assert snapshot(env.mesh.store) == before
    started = client.post(
        "/workflows/review/start", data={**data, "field.item": "x"}, headers=headers
    )
    assert started.status_code == 403
    assert snapshot(env.mesh.store) == before
    # The same request from the console's own origin goes through.
    ok = client.post(
        f"/runs/{run.id}/actions/unblock_run",
        data={"csrf": good},
        headers={"origin": "http://testserver", "sec-fetch-site": "same-origin"},
        follow_redirects=False,
    )
    assert ok.status_code == 303


def test_the_csrf_cookie_is_strict_and_http_only(env: Console) -> None:
    response = env.client().get("/")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("squidmesh_csrf=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/" in cookie


@pytest.mark.parametrize("mode", ["read_only", "no actor"])
def test_read_only_shows_no_controls_and_refuses_actions(env: Console, mode: str) -> None:
    run = env.mesh.start_run(flows.review, {"item": "rope"})
    if mode == "read_only":
        client = env.client(read_only=True)
    else:
        env.actor = None
        client = env.client()
    page = client.get(f"/runs/{run.id}").text
    assert 'data-action="' not in page
    assert "data-read-only" in page
    assert 'data-action="' not in client.get("/workflows/review").text
    assert '<form method="post"' not in page
    before = snapshot(env.mesh.store)
    for path, data in (
        (f"/runs/{run.id}/actions/unblock_run", {}),
        (f"/runs/{run.id}/actions/cancel_run", {}),
        ("/workflows/review/start", {"field.item": "x"}),
    ):
        refused = post(client, path, data)
        assert refused.status_code == 403
        assert "read-only" in refused.text.lower() or "no operator" in refused.text
        as_json = post(client, path, data, headers={"accept": "application/json"})
        assert as_json.status_code == 403 and as_json.json()["ok"] is False
    assert snapshot(env.mesh.store) == before


def test_an_async_actor_and_an_actor_that_names_nobody(env: Console) -> None:
    run = env.mesh.start_run(flows.review, {"item": "rope"})

    async def who(request: Any) -> str | None:
        user = request.headers.get("x-user")
        return str(user) if user else None

    client = env.client(actor=who)
    assert post(client, f"/runs/{run.id}/actions/unblock_run").status_code == 403
    named = post(client, f"/runs/{run.id}/actions/unblock_run", headers={"x-user": "zoe"})
    assert named.status_code == 303
    events = env.mesh.inspect_run(run.id, include_history=True).audit_events or ()
    assert [e.actor for e in events if e.type == "unblocked"] == ["zoe"]


def test_get_never_acts(env: Console) -> None:
    run = env.mesh.start_run(flows.review, {"item": "rope"})
    client = env.client()
    before = snapshot(env.mesh.store)
    for path in (f"/runs/{run.id}/actions/unblock_run", "/workflows/review/start"):
        assert client.get(path).status_code == 405
    for path in ("/", f"/runs/{run.id}", "/workflows", "/workflows/review", "/live/runs"):
        assert client.get(path).status_code == 200
    assert snapshot(env.mesh.store) == before
    assert env.mesh.inspect_run(run.id).status is sm.RunStatus.PAUSED


def test_console_checks_its_arguments(env: Console) -> None:
    from squidmesh.web import console

    with pytest.raises(TypeError, match="needs a squidmesh Mesh"):
        console(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="function of the request"):
        console(env.mesh, actor="ana")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count_limit"):
        console(env.mesh, count_limit=0)
