from __future__ import annotations

# The console's pages through its ASGI app (Starlette's TestClient, no server, no
# browser): what each page shows, its test hooks, filters, search and paging, the
# live endpoints, mounting under a path.
import re
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import squidmesh as sm
from squidmesh.web import console
from tests.web import flows
from tests.web.conftest import Console, TestClient, post


class Hooks(HTMLParser):
    """The elements of a page that carry the console's data-* test hooks."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if any(k.startswith("data-") for k in found):
            self.elements.append((tag, found))

    def with_attr(self, name: str) -> list[dict[str, str]]:
        return [attrs for _, attrs in self.elements if name in attrs]


def rows(html: str) -> list[tuple[str, str]]:
    return [(a["data-run-id"], a["data-status"]) for a in Hooks(html).with_attr("data-run-id")]


def actions(html: str) -> list[str]:
    return [a["data-action"] for a in Hooks(html).with_attr("data-action")]


def nodes(html: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for attrs in Hooks(html).with_attr("data-step"):
        found.setdefault(attrs["data-step"], attrs["data-state"])
    return found


def start(env: Console, item: str = "rope", **kwargs: Any) -> sm.Run:
    run = env.mesh.start_run(flows.review, {"item": item}, **kwargs)
    env.clock.advance(1)
    return run


# --------------------------------------------------------------------------- runs


def test_runs_page_lists_runs_newest_first_with_counts_for_every_status(env: Console) -> None:
    first = start(env, "rope")
    second = start(env, "lamp")
    env.mesh.cancel_run(second.id)
    waiting = env.mesh.start_run(flows.waiter)
    client = env.client()
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert rows(page.text) == [
        (str(waiting.id), "running"),
        (str(second.id), "cancelled"),
        (str(first.id), "paused"),
    ]
    counts = {a["data-status-count"]: a for a in Hooks(page.text).with_attr("data-status-count")}
    assert set(counts) == {"all", *(s.value for s in sm.RunStatus)}
    shown = dict(
        re.findall(r'data-status-count="(\w+)"><span>\w+</span> <b>([\d,+]+)</b>', page.text)
    )
    assert shown == {
        "all": "3",
        **{s.value: "0" for s in sm.RunStatus},
        "paused": "1",
        "cancelled": "1",
        "running": "1",
    }


def test_runs_page_filters_searches_and_pages(env: Console) -> None:
    made = [start(env, f"item-{i}", idempotency_key=f"key-{i}") for i in range(5)]
    api = env.mesh.start_run(flows.review, {"item": "x"}, trigger="api")
    env.mesh.unblock_run(made[0].id, actor="bo")  # now waiting at sign_off
    done = env.mesh.start_run(flows.rocket)
    client = env.client()

    def ids(query: str) -> list[str]:
        response = client.get("/" + query)
        assert response.status_code == 200, response.text
        return [run_id for run_id, _ in rows(response.text)]

    assert ids("?status=completed") == [str(done.id)]
    assert ids("?workflow=rocket") == [str(done.id)]
    assert ids("?workflow=review&status=completed") == []
    assert ids(f"?q={str(made[2].id)[:8]}&field=id") == [str(made[2].id)]
    assert ids(f"?q={str(made[2].id)[:8]}") == [str(made[2].id)]  # "anything" tries the id
    assert ids("?q=api&field=trigger") == [str(api.id)]
    assert ids("?q=sign_off&field=step") == [str(made[0].id)]
    assert ids("?q=sign_off") == [str(made[0].id)]
    assert ids("?q=key-3&field=key") == [str(made[3].id)]
    assert ids("?q=rocket") == [str(done.id)]  # a workflow name
    assert ids("?q=nothing-like-this") == []
    assert "No run matches" in client.get("/?q=nothing-like-this").text

    # Keyset paging, newest first, 20 per page: 7 runs + 20 more.
    for i in range(20):
        start(env, f"bulk-{i}")
    everything = [str(r.id) for r in env.mesh.list_runs(limit=100)]
    assert len(everything) == 27
    first_page = client.get("/?size=20")
    assert [rid for rid, _ in rows(first_page.text)] == everything[:20]
    older = re.search(r'href="([^"]+)" data-page="older"', first_page.text)
    assert older is not None
    second_page = client.get(older.group(1).replace("&amp;", "&"))
    assert [rid for rid, _ in rows(second_page.text)] == everything[20:]
    assert 'data-page="older"' not in second_page.text
    assert 'data-page="newest"' in second_page.text


def test_bad_filters_are_dropped_with_a_note(env: Console) -> None:
    start(env)
    client = env.client()
    page = client.get("/?status=sleepy&size=7&field=nonsense")
    assert page.status_code == 200
    assert "Unknown status" in page.text and len(rows(page.text)) == 1
    gone = client.get(f"/?before={'0' * 8}-0000-4000-8000-000000000000")
    assert gone.status_code == 200 and "starting run is gone" in gone.text


def test_counts_stop_at_the_count_limit(env: Console) -> None:
    for i in range(4):
        start(env, f"i{i}")
    page = env.client(count_limit=3).get("/")
    assert 'data-status-count="paused"><span>paused</span> <b>3+</b>' in page.text
    assert 'data-status-count="all"><span>all</span> <b>3+</b>' in page.text


# --------------------------------------------------------------------------- one run


def test_run_page_shows_explanation_graph_history_and_exactly_its_actions(env: Console) -> None:
    run = start(env)
    client = env.client()
    page = client.get(f"/runs/{run.id}")
    assert page.status_code == 200
    text = page.text
    assert "Paused at check (count the boxes): an operator unblocks it to go on." in text
    assert actions(text) == ["unblock_run", "cancel_run"]
    assert nodes(text) == {
        "review": "completed",
        "prepare": "completed",
        "check": "waiting",
        "sign_off": "ahead",
        "ship": "ahead",
        "return": "none",
    }
    assert 'data-seq="0"' in text and "1 x rope prepared" in text  # history with output
    assert 'data-audit="run_started"' in text and 'data-audit="paused"' in text

    env.mesh.unblock_run(run.id, actor="bo", data={"boxes": 3})
    page = client.get(f"/runs/{run.id}").text
    assert actions(page) == ["approve_run", "reject_run", "cancel_run"]
    assert nodes(page)["check"] == "completed" and nodes(page)["sign_off"] == "waiting"

    env.mesh.approve_run(run.id, actor="cy")
    page = client.get(f"/runs/{run.id}").text
    assert actions(page) == ["fork_run", "replay_run"]
    assert nodes(page)["ship"] == "completed"
    assert "The run completed." in page


def test_a_finished_run_marks_the_path_not_taken(env: Console) -> None:
    run = start(env)
    env.mesh.unblock_run(run.id)
    env.mesh.reject_run(run.id, actor="bo")
    page = env.client().get(f"/runs/{run.id}").text
    assert nodes(page)["ship"] == "not_taken"
    assert nodes(page)["sign_off"] == "completed"


def test_run_page_for_a_suspended_run_shows_the_traceback_without_server_paths(
    env: Console,
) -> None:
    run = env.mesh.start_run(flows.buggy)
    page = env.client().get(f"/runs/{run.id}").text
    assert actions(page) == ["resume_run", "cancel_run"]
    assert "ZeroDivisionError" in page and "traceback" in page
    assert "tests/web/flows.py" in page  # the file, relative to the project
    repo = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    assert repo not in page
    assert re.search(r'"/(home|root|usr|tmp|work)/', page) is None


def test_lineage_links_both_ways(env: Console) -> None:
    done = env.mesh.start_run(flows.rocket)
    forked = env.mesh.fork_run(done.id, at_seq=1)
    client = env.client()
    source = client.get(f"/runs/{done.id}").text
    assert f'href="/runs/{forked.id}" data-lineage="forked_as"' in source
    child = client.get(f"/runs/{forked.id}").text
    assert f'href="/runs/{done.id}" data-lineage="fork_of"' in child


def test_run_ids_by_prefix_and_unknown_runs(env: Console) -> None:
    run = start(env)
    client = env.client()
    found = client.get(f"/runs/{str(run.id)[:8]}", follow_redirects=False)
    assert found.status_code == 303 and found.headers["location"] == f"/runs/{run.id}"
    missing = client.get("/runs/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and "not found" in missing.text
    assert client.get("/runs/<script>").status_code == 404


def test_a_run_of_a_workflow_this_mesh_does_not_have(env: Console, tmp_path: Any) -> None:
    run = start(env)
    bare = sm.Mesh(f"sqlite:///{tmp_path / 'console.db'}")
    try:
        other = TestClient(console(bare, actor=lambda r: "ana"))
        text = other.get(f"/runs/{run.id}").text
        assert "no workflow named review" in text
        assert actions(text) == ["cancel_run"]
        assert "No graph" in text and "<svg" not in text
        assert "has no workflows registered" in other.get("/workflows").text
        other.close()
    finally:
        bare.close()


# --------------------------------------------------------------------------- workflows


def test_workflows_pages_list_triggers_counts_forms_and_graphs(env: Console) -> None:
    start(env)
    client = env.client()
    listing = client.get("/workflows").text
    assert [a["data-workflow"] for a in Hooks(listing).with_attr("data-workflow")] == [
        "buggy",
        "review",
        "rocket",
        "waiter",
    ]
    page = client.get("/workflows/review").text
    assert [a["data-trigger"] for a in Hooks(page).with_attr("data-trigger")] == ["desk", "api"]
    assert actions(page) == ["start_run", "start_run"]
    for name in ("item", "qty", "rush", "size", "due", "tags"):
        assert f'name="field.{name}"' in page
    assert 'type="date"' in page and "default: computed when the run starts" in page
    assert set(nodes(page).values()) == {"declared"}
    assert client.get("/workflows/nobody").status_code == 404


# --------------------------------------------------------------------------- queues


def test_queues_page_shows_each_queue_s_running_waiting_limits_and_keys(
    env: Console, tmp_path: Any
) -> None:
    # Queued steps wait for a claim (the database executor): the activation makes three
    # charges wait; a claim that knows the queue takes what its limits allow.
    worker = sm.Mesh(
        f"sqlite:///{tmp_path / 'console.db'}",
        workflows=flows.QUEUED,
        executor=sm.DatabaseExecutor(),
        clock=env.clock,
    )
    try:
        worker.start_run(flows.billing)
        assert worker.drain(limit=1) == 1  # the activation
        now = env.clock()
        with worker.store.transaction() as tx:
            taken = tx.claim_jobs(
                now=now,
                limit=10,
                worker="a-worker",
                lease_until=now + timedelta(minutes=5),
                queues={flows.CHARGES.name: flows.CHARGES},
            )
        assert len(taken) == 2  # one per customer
        client = env.client()
        page = client.get("/queues").text
        (row,) = [a for a in Hooks(page).with_attr("data-queue") if a["data-queue"] == "charges"]
        assert row == {"data-queue": "charges"}
        row_html = page.split('data-queue="charges"', 1)[1].split("\n</tr>", 1)[0]
        cells = {
            label: " ".join(re.sub(r"<[^>]+>", " ", text).split())
            for label, text in re.findall(r'<td data-label="(\w+)"[^>]*>(.*?)</td>', row_html, re.S)
        }
        assert cells["Running"] == "2 of 2"  # both slots taken (one per customer)
        assert cells["Waiting"] == "1"  # acme's second charge: its key is at its limit
        assert cells["Limits"] == (
            "concurrency 2 per key 1 rate 30 per 60s: 2 started in the window"
        )
        keys = [a["data-key"] for a in Hooks(page).with_attr("data-key")]
        assert keys == ["acme", "bolt"]
        assert 'aria-current="page">Queues</a>' in page
        live = client.get("/live/queues").json()
        assert set(live["regions"]) == {"queues"}
        assert f'data-hash="{live["regions"]["queues"]["hash"]}"' in page
    finally:
        worker.close()


# --------------------------------------------------------------------------- live


def test_live_endpoints_send_regions_and_skip_unchanged_runs(env: Console) -> None:
    run = start(env)
    client = env.client()
    live = client.get(f"/live/runs/{run.id}").json()
    assert set(live["regions"]) == {
        "summary",
        "actions",
        "graph",
        "facts",
        "data",
        "history",
        "audit",
    }
    assert all(set(r) == {"hash", "html"} for r in live["regions"].values())
    same = client.get(f"/live/runs/{run.id}?v={live['version']}").json()
    assert same == {"version": live["version"], "regions": {}}
    env.clock.advance(5)
    env.mesh.unblock_run(run.id)
    moved = client.get(f"/live/runs/{run.id}?v={live['version']}").json()
    assert moved["version"] != live["version"]
    assert 'data-action="approve_run"' in moved["regions"]["actions"]["html"]

    listing = client.get("/live/runs?status=paused").json()
    assert set(listing["regions"]) == {"counts", "rows"}
    assert str(run.id) in listing["regions"]["rows"]["html"]
    page = client.get("/?status=paused").text
    assert f'data-hash="{listing["regions"]["rows"]["hash"]}"' in page
    assert client.get("/live/runs/00000000-0000-4000-8000-000000000000").status_code == 404


# --------------------------------------------------------------------------- mounting


def test_mounted_under_a_path_every_link_and_the_cookie_stay_under_it(env: Console) -> None:
    run = start(env)
    host = Starlette(routes=[Mount("/ops/runs", app=env.app())])
    client = env.client(host)
    page = client.get("/ops/runs/")
    assert page.status_code == 200
    assert f'href="/ops/runs/runs/{run.id}"' in page.text
    assert 'src="/ops/runs/static/console.js?v=' in page.text
    assert 'data-live="/ops/runs/live/runs"' in page.text
    assert "Path=/ops/runs" in page.headers["set-cookie"]
    hrefs = re.findall(r'(?:href|src|action)="(/[^"]*)"', page.text)
    assert hrefs and all(h.startswith("/ops/runs/") for h in hrefs)
    moved = post(client, f"/ops/runs/runs/{run.id}/actions/unblock_run")
    assert moved.status_code == 303
    assert moved.headers["location"] == f"/ops/runs/runs/{run.id}?done=unblock_run"
    assert env.mesh.inspect_run(run.id).current_steps == ("sign_off",)


def test_static_assets_are_served_from_the_package(env: Console) -> None:
    client = env.client()
    js = client.get("/static/console.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "immutable" in js.headers["cache-control"]
    assert client.get("/static/console.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../base.py").status_code == 404
    assert client.get("/static/nothing.js").status_code == 404


def test_long_histories_show_their_latest_entries(
    env: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    from squidmesh.web import pages

    run = env.mesh.start_run(flows.review, {"item": "rope"})
    env.mesh.unblock_run(run.id)
    monkeypatch.setattr(pages, "HISTORY_LIMIT", 2)
    page = env.client().get(f"/runs/{run.id}").text
    assert [a["data-seq"] for a in Hooks(page).with_attr("data-seq")] == ["1", "2"]
    assert "The latest 2 of 3 entries" in page and f"squidmesh runs history {run.id}" in page


def test_run_page_shows_published_state_children_and_family_links(env: Console) -> None:
    from tests.runtime import family

    for workflow in family.WORKFLOWS:
        env.mesh.register(workflow)
    parent = env.mesh.start_run(family.publishing)  # paused at its approval
    page = env.client().get(f"/runs/{parent.id}").text
    assert "<h2>Published</h2>" in page
    assert "waiting for a person" in page and "progress" in page
    fan = env.mesh.start_run(family.fan_out, {"items": [1, 2], "review": True})
    kids = env.mesh.list_runs(workflow="kid")
    page = env.client().get(f"/runs/{fan.id}").text
    assert "<h2>Child runs</h2>" in page
    listed = [(rid, status) for rid, status in rows(page)]
    assert sorted(listed) == sorted((str(k.id), "paused") for k in kids)
    assert "waiting for child" not in page  # a join of children: waiting for join
    child_page = env.client().get(f"/runs/{kids[0].id}").text
    assert f'href="/runs/{fan.id}" data-lineage="child_of"' in child_page
    looped = env.mesh.start_run(family.looping, {"until": 1})
    env.clock.advance(5)
    env.mesh.drain()
    nxt = env.mesh.inspect_run(looped.id).continued_as_run_id
    first_page = env.client().get(f"/runs/{looped.id}").text
    assert f'href="/runs/{nxt}" data-lineage="continued_as"' in first_page
    second_page = env.client().get(f"/runs/{nxt}").text
    assert f'href="/runs/{looped.id}" data-lineage="continues"' in second_page


def test_the_explanation_of_a_parent_names_its_child_and_why_it_waits(env: Console) -> None:
    from tests.runtime import family

    for workflow in family.WORKFLOWS:
        env.mesh.register(workflow)
    parent = env.mesh.start_run(family.one_child, {"items": [3], "review": True})
    (kid,) = env.mesh.list_runs(workflow="kid")
    page = env.client().get(f"/runs/{parent.id}").text
    assert f"Waiting for child run {kid.id} of kid (paused for approval)." in page
