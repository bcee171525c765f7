from __future__ import annotations

# The console in a real browser: Playwright for Python driving Debian's Chromium
# (/usr/bin/chromium), end to end on PostgreSQL. The console is served by uvicorn in a
# thread of this process, mounted under /ops (acting as "ana") and /view (read-only),
# and a `mesh.worker()` thread moves the runs on, as in a host application.
#
# Waits are Playwright's: each polls the page for a condition (an attribute, a text)
# with a deadline; nothing sleeps in place of synchronisation.
#
# Screenshots (1280x800 and 390 wide) go to the test's temporary folder; with
# SQUIDMESH_SCREENSHOTS=1 they are written to docs/images/ (what docs/console.md shows).
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the console needs the web extra: pip install -e '.[web]'")
pytest.importorskip("uvicorn", reason="the browser tests serve the console with uvicorn ('.[web]')")
pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need Playwright: pip install -e '.[dev]'"
)

import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

import squidmesh as sm
from squidmesh.web import console
from tests.support import postgres
from tests.web import flows

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
WAIT_MS = 20_000
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>'

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """An ASGI app served by uvicorn in a background thread, on a free port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped before it started"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


class Shots:
    """Where screenshots go: docs/images with SQUIDMESH_SCREENSHOTS=1, else tmp."""

    def __init__(self, tmp: Path) -> None:
        self.folder = DOCS_IMAGES if os.environ.get("SQUIDMESH_SCREENSHOTS") == "1" else tmp
        self.folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Page, name: str, *, full_page: bool = False) -> Path:
        path = self.folder / f"console-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 10_000  # a real picture, not a blank page
        return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Site:
    """The Mesh on a fresh PostgreSQL database, its worker, and the served console."""

    def __init__(self, database_url: str) -> None:
        self.mesh = sm.Mesh(
            postgres.sqlalchemy_url(database_url), workflows=[*flows.ALL, *flows.QUEUED]
        )
        self.mesh.migrate()
        self.mesh.worker(poll_interval=0.2, concurrency=2)
        host = Starlette(
            routes=[
                Mount("/ops", app=console(self.mesh, actor=lambda r: "ana", poll_seconds=0.5)),
                Mount("/view", app=console(self.mesh, read_only=True, poll_seconds=0.5)),
            ]
        )
        self.served = Served(host)
        self.url = self.served.url

    def wait(self, run_id: Any, *statuses: str) -> sm.Run:
        """The run once the worker has brought it to one of ``statuses`` (polled)."""
        deadline = time.monotonic() + WAIT_MS / 1000
        while True:
            run = self.mesh.inspect_run(run_id)
            if run.status.value in statuses:
                return run
            assert time.monotonic() < deadline, f"run {run_id} stayed {run.status.value}"
            time.sleep(0.05)

    def close(self) -> None:
        self.served.stop()
        self.mesh.close()


@pytest.fixture
def site(pg_database_url: str) -> Iterator[Site]:
    made = Site(pg_database_url)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    opened.set_default_timeout(WAIT_MS)
    try:
        yield opened
    finally:
        context.close()
    # No script error and no CSP violation on any page the test opened (HTTP errors the
    # tests provoke on purpose are logged as "Failed to load resource").
    assert [e for e in errors if not e.startswith("Failed to load resource")] == []


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path)


def paused_review(site: Site, item: str = "rope", **kwargs: Any) -> sm.Run:
    run = site.mesh.start_run(flows.review, {"item": item}, **kwargs)
    return site.wait(run.id, "paused")


def status_of(page: Page, run_id: Any) -> Any:
    return page.locator(f'[data-run-id="{run_id}"]')


# --------------------------------------------------------------------------- tests


def test_list_filter_search_and_follow_changes(site: Site, page: Page, shots: Shots) -> None:
    first = paused_review(site, "rope", idempotency_key="order-1")
    second = paused_review(site, "lamp")
    done = site.wait(site.mesh.start_run(flows.rocket).id, "completed")
    waiting = site.wait(site.mesh.start_run(flows.waiter).id, "running")

    page.goto(f"{site.url}/ops/")
    expect(page.locator("tr[data-run-id]")).to_have_count(4)
    expect(status_of(page, done.id)).to_have_attribute("data-status", "completed")
    expect(page.locator('[data-status-count="paused"] b')).to_have_text("2")
    shots.take(page, "runs")

    page.click('[data-status-count="paused"]')
    expect(page).to_have_url(re.compile(r"status=paused"))
    expect(page.locator("tr[data-run-id]")).to_have_count(2)

    page.fill('input[name="q"]', str(second.id)[:8])
    page.click('form.filters button[type="submit"]')
    expect(page.locator("tr[data-run-id]")).to_have_count(1)
    expect(status_of(page, second.id)).to_be_visible()

    page.goto(f"{site.url}/ops/?q=order-1")
    expect(page.locator("tr[data-run-id]")).to_have_count(1)
    expect(status_of(page, first.id)).to_be_visible()

    page.goto(f"{site.url}/ops/")
    page.evaluate("window.__kept = 'same page'")
    site.mesh.cancel_run(first.id, actor="bo")  # changed elsewhere, shown without reload
    site.mesh.send_event(waiting.id, "go", {"n": 1})
    expect(status_of(page, first.id)).to_have_attribute("data-status", "cancelled")
    expect(status_of(page, waiting.id)).to_have_attribute("data-status", "completed")
    expect(page.locator('[data-status-count="cancelled"] b')).to_have_text("1")
    assert page.evaluate("window.__kept") == "same page"


def test_open_a_paused_run_unblock_approve_and_watch_it_move_on(
    site: Site, page: Page, shots: Shots
) -> None:
    run = paused_review(site, "rope")
    page.goto(f"{site.url}/ops/")
    page.click(f'[data-run-id="{run.id}"] a')
    expect(page).to_have_url(f"{site.url}/ops/runs/{run.id}")
    expect(page.locator('[data-step="check"]')).to_have_attribute("data-state", "waiting")
    page.evaluate("window.__kept = 'same page'")

    unblock = page.locator('[data-action="unblock_run"]')
    unblock.locator('textarea[name="comment"]').fill("3 boxes counted")
    unblock.locator('textarea[name="data"]').fill('{"boxes": 3}')
    unblock.locator('button[type="submit"]').click()
    expect(page.locator("[data-flash-ok]")).to_have_text("Unblocked.")
    approve = page.locator('[data-action="approve_run"]')
    expect(approve).to_be_visible()
    expect(page.locator('[data-step="sign_off"]')).to_have_attribute("data-state", "waiting")
    shots.take(page, "run", full_page=False)
    shots.take(page, "run-full", full_page=True)

    approve.locator('textarea[name="comment"]').fill("looks right")
    approve.locator('button[type="submit"]').click()
    # The worker ships it; the page follows without a reload.
    expect(page.locator('[data-region="summary"] .badge')).to_have_text("completed")
    expect(page.locator('[data-step="ship"]')).to_have_attribute("data-state", "completed")
    expect(page.locator('[data-action="approve_run"]')).to_have_count(0)
    expect(page.locator('[data-audit="approved"]')).to_contain_text("ana")
    expect(page.locator('[data-audit="approved"]')).to_contain_text("looks right")
    assert page.evaluate("window.__kept") == "same page"
    done = site.mesh.inspect_run(run.id)
    assert done.result == {
        "prepared": "1 x rope prepared",
        "checked": {"boxes": 3},
        "shipped": "rope shipped",
    }


def test_start_a_run_from_the_form(site: Site, page: Page, shots: Shots) -> None:
    page.goto(f"{site.url}/ops/workflows/review")
    form = page.locator('[data-trigger="desk"] form')
    form.locator('input[name="field.item"]').fill("lantern")
    form.locator('input[name="field.qty"]').fill("3")
    form.locator('select[name="field.size"]').select_option("l")
    shots.take(page, "workflow")
    form.locator('button[type="submit"]').click()
    expect(page).to_have_url(re.compile(rf"{site.url}/ops/runs/[0-9a-f-]{{36}}\?done=start_run"))
    expect(page.locator("[data-done]")).to_have_text("Run started.")
    expect(page.locator('[data-step="check"]')).to_have_attribute("data-state", "waiting")
    run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url)
    assert run_id is not None
    run = site.mesh.inspect_run(run_id.group(1), include_history=True)
    assert run.payload["qty"] == 3 and run.payload["size"] == "l"
    assert run.audit_events is not None and run.audit_events[0].actor == "ana"

    page.goto(f"{site.url}/ops/workflows/review")
    page.locator('[data-trigger="desk"] form button[type="submit"]').click()  # no item
    expect(page.locator("[data-error]")).to_contain_text("missing")
    expect(page.locator(".field.invalid")).to_have_count(1)


def test_cancel_with_compensation_and_fork(site: Site, page: Page) -> None:
    run = paused_review(site)
    page.goto(f"{site.url}/ops/runs/{run.id}")
    cancel = page.locator('[data-action="cancel_run"]')
    cancel.locator("summary").click()
    cancel.locator('textarea[name="comment"]').fill("ordered by mistake")
    cancel.locator('input[name="compensate"]').check()
    cancel.locator('button[type="submit"]').click()
    expect(page.locator('[data-region="summary"] .badge')).to_have_text("cancelled")
    expect(page.locator('[data-audit="cancel_requested"]')).to_contain_text("ordered by mistake")
    assert site.mesh.inspect_run(run.id).status is sm.RunStatus.CANCELLED

    done = site.wait(site.mesh.start_run(flows.rocket).id, "completed")
    page.goto(f"{site.url}/ops/runs/{done.id}")
    fork = page.locator('[data-action="fork_run"]')
    fork.locator("summary").click()
    fork.locator('select[name="at_seq"]').select_option("1")
    fork.locator('button[type="submit"]').click()
    expect(page).to_have_url(re.compile(r"/ops/runs/[0-9a-f-]{36}\?done=fork_run"))
    expect(page.locator('[data-lineage="fork_of"]')).to_have_attribute(
        "href", f"/ops/runs/{done.id}"
    )
    expect(page.locator('[data-region="summary"] .badge')).to_have_text("completed")


def test_replay_past_an_irreversible_step_asks_twice(site: Site, page: Page) -> None:
    done = site.wait(site.mesh.start_run(flows.rocket).id, "completed")
    page.goto(f"{site.url}/ops/runs/{done.id}")
    replay = page.locator('[data-action="replay_run"]')
    replay.locator("summary").click()
    replay.locator('input[name="allow_irreversible"]').check()
    replay.locator('button[type="submit"]').click()
    expect(page.locator("h1")).to_have_text("Replay past irreversible steps?")
    assert len(site.mesh.list_runs(workflow=flows.rocket)) == 1  # nothing yet
    page.locator('[data-confirm-step="second"] button[type="submit"]').click()
    expect(page.locator('[data-lineage="replay_of"]')).to_have_attribute(
        "href", f"/ops/runs/{done.id}"
    )
    assert len(site.mesh.list_runs(workflow=flows.rocket)) == 2


def test_xss_in_payloads_comments_and_events_stays_text(site: Site, page: Page) -> None:
    run = paused_review(site, XSS, idempotency_key=XSS)
    site.mesh.unblock_run(run.id, actor=XSS, comment=XSS, data={"x": XSS})
    waiting = site.wait(site.mesh.start_run(flows.waiter).id, "running")
    site.mesh.send_event(waiting.id, "go", {"x": XSS})
    for path in ("/ops/", f"/ops/runs/{run.id}", f"/ops/runs/{waiting.id}", f"/ops/?q={XSS}"):
        page.goto(site.url + path)
        expect(page.locator("main")).to_be_visible()
        assert page.evaluate("window.__xss") is None, path
    page.goto(f"{site.url}/ops/runs/{run.id}")
    expect(page.locator('[data-region="data"] pre').first).to_contain_text("<img src=x onerror=")
    expect(page.locator('[data-audit="unblocked"] .comment')).to_have_text(XSS)
    # Live updates swap HTML into the page: still text.
    site.mesh.approve_run(run.id, actor=XSS, comment=XSS)
    expect(page.locator('[data-region="summary"] .badge')).to_have_text("completed")
    assert page.evaluate("window.__xss") is None


def test_a_cross_site_post_is_refused(site: Site, page: Page) -> None:
    run = paused_review(site)
    page.goto(f"{site.url}/ops/runs/{run.id}")  # the operator is "logged in": cookie set
    target = f"{site.url}/ops/runs/{run.id}/actions/cancel_run"
    evil = Served(
        Starlette(
            routes=[
                Route(
                    "/",
                    lambda request: HTMLResponse(
                        f'<form method="post" action="{target}">'
                        '<input type="hidden" name="csrf" value="guessed-token-000000000000000000000000000">'
                        '<button id="go">win a prize</button></form>'
                    ),
                )
            ]
        )
    )
    try:
        page.goto(evil.url + "/")
        page.click("#go")
        expect(page.locator("[data-error]")).to_contain_text("Refused")
        # A script on the other origin sending the POST (no-cors) gets nowhere either.
        page.goto(evil.url + "/")
        page.evaluate(
            "url => fetch(url, {method: 'POST', mode: 'no-cors', credentials: 'include',"
            " body: new URLSearchParams({comment: 'x'})})",
            target,
        )
    finally:
        evil.stop()
    assert site.mesh.inspect_run(run.id).status is sm.RunStatus.PAUSED
    events = site.mesh.inspect_run(run.id, include_history=True).audit_events or ()
    assert "cancel_requested" not in [e.type for e in events]


def test_read_only_console(site: Site, page: Page) -> None:
    run = paused_review(site)
    page.goto(f"{site.url}/view/runs/{run.id}")
    expect(page.locator("[data-read-only]")).to_be_visible()
    expect(page.locator("[data-action]")).to_have_count(0)
    status = page.evaluate(
        "url => fetch(url, {method: 'POST', body: new URLSearchParams({csrf: 'x'})})"
        ".then(r => r.status)",
        f"{site.url}/view/runs/{run.id}/actions/cancel_run",
    )
    assert status == 403
    page.goto(f"{site.url}/view/workflows/review")
    expect(page.locator("[data-action]")).to_have_count(0)
    assert site.mesh.inspect_run(run.id).status is sm.RunStatus.PAUSED


def test_the_queues_page_follows_slots_taken_and_freed(
    site: Site, page: Page, shots: Shots
) -> None:
    # The worker's two threads take both slots of "charges" (one per customer); acme's
    # second charge waits for its key. The charges hold their slots until released.
    flows.RELEASE.clear()
    try:
        run = site.mesh.start_run(flows.billing)
        page.goto(f"{site.url}/ops/")
        page.get_by_role("link", name="Queues").click()
        expect(page).to_have_url(re.compile(r"/ops/queues$"))
        expect(page.get_by_role("link", name="Queues")).to_have_attribute("aria-current", "page")
        row = page.locator('[data-queue="charges"]')
        expect(row.locator("[data-running]")).to_have_text("2 of 2")
        expect(row.locator("[data-waiting]")).to_have_text("1")
        expect(row.locator("[data-limits]")).to_contain_text("per key 1")
        row.locator("summary").click()
        expect(row.locator('[data-key="acme"] td').nth(2)).to_have_text("1")  # waiting
        shots.take(page, "queues")
    finally:
        flows.RELEASE.set()
    site.wait(run.id, "completed")
    # The live region follows: every slot freed, nothing waiting.
    expect(row.locator("[data-running]")).to_have_text("0 of 2")
    expect(row.locator("[data-waiting]")).to_have_text("0")


def test_phone_width_and_dark_mode(site: Site, browser: Browser, shots: Shots) -> None:
    run = paused_review(site)
    paused_review(site, "lamp")
    site.wait(site.mesh.start_run(flows.rocket).id, "completed")
    phone = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="light")
    try:
        page = phone.new_page()
        page.set_default_timeout(WAIT_MS)
        for path, name in (("/ops/", "runs-phone"), (f"/ops/runs/{run.id}", "run-phone")):
            page.goto(site.url + path)
            expect(page.locator("main")).to_be_visible()
            # Nothing wider than the screen but the graph, which scrolls in its own box.
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)
            shots.take(page, name)
        unblock = page.locator('[data-action="unblock_run"] button[type="submit"]')
        unblock.click()
        expect(page.locator('[data-action="approve_run"]')).to_be_visible()
    finally:
        phone.close()
    dark = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="dark")
    try:
        page = dark.new_page()
        page.goto(f"{site.url}/ops/runs/{run.id}")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(18, 18, 26)"  # the dark palette followed the system
        shots.take(page, "run-dark")
    finally:
        dark.close()
