from __future__ import annotations

# The `squidmesh` command line, run as a subprocess against PostgreSQL.
#
# The module's runs are set up in-process (a Mesh on the same database, with a clock an
# hour behind so every timer it starts is long due), then inspected and operated through
# `python -m squidmesh.cli --app tests.cli.app:mesh ...`. Each subprocess costs ~0.4 s,
# so each test groups several assertions.
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from examples.ring_errand import ring_errand
from squidmesh.demo import T0 as DEMO_T0
from squidmesh.demo import app as demo_app
from squidmesh.storage.base import SCHEMA_VERSION
from squidmesh.storage.sql_migrate import migrations
from squidmesh.testing import replay
from tests.cli.workflows import WORKFLOWS
from tests.support import postgres

REPO = Path(__file__).resolve().parents[2]
APP = "tests.cli.app:mesh"
APP_V2 = "tests.cli.app_v2:mesh"
#: what `squidmesh migrate` applies to an empty database (the same files on both dialects)
APPLIED = ", ".join(m.name for m in migrations("sqlite"))
assert APPLIED == ", ".join(m.name for m in migrations("postgresql"))
HAZARDS = REPO / "tests" / "cli" / "hazards.py"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(
    url: str | None,
    *args: str,
    app: str | None = APP,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> Result:
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SQUIDMESH_") and k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")
    }
    full["PYTHONPATH"] = str(REPO)  # tests.cli.app and examples/ from any directory
    if url is not None:
        full["SQUIDMESH_DATABASE_URL"] = url
    if app is not None:
        full["SQUIDMESH_APP"] = app
    full.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "squidmesh.cli", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def one_error_line(result: Result) -> str:
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("squidmesh: error: "), result.err
    return lines[0]


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def local_mesh(url: str, *, ago: timedelta = timedelta(hours=1)) -> tuple[sm.Mesh, Clock]:
    clock = Clock(datetime.now(timezone.utc) - ago)
    mesh = sm.Mesh(url, workflows=WORKFLOWS, executor=sm.InlineExecutor(), clock=clock)
    return mesh, clock


def to_council(mesh: sm.Mesh, clock: Clock, ring_id: str) -> str:
    run = mesh.start_run(ring_errand, {"ring_id": ring_id, "started_on": "2030-01-01"})
    clock.advance(5)
    mesh.drain()
    mesh.unblock_run(run.id, actor="strider")
    assert mesh.inspect_run(run.id).status == "paused"
    return str(run.id)


def completed(mesh: sm.Mesh, clock: Clock, ring_id: str) -> str:
    run_id = to_council(mesh, clock, ring_id)
    mesh.approve_run(run_id, actor="elrond")
    assert mesh.inspect_run(run_id).status == "completed"
    return run_id


@pytest.fixture(scope="module")
def url(pg_server_url: str) -> Iterator[str]:
    created = postgres.create_database(pg_server_url, "cli")
    try:
        yield postgres.sqlalchemy_url(created)
    finally:
        postgres.drop_database(created)


@pytest.fixture(scope="module")
def runs(url: str) -> Iterator[dict[str, str]]:
    """The module's runs, by role; `squidmesh migrate` created the schema."""
    migrated = cli(url, "migrate")
    assert migrated.code == 0, migrated.err
    database = url.replace("postgresql+psycopg://", "postgresql://")
    assert migrated.out == (
        f"squidmesh: applied {APPLIED} to "
        f"{database} (schema squidmesh); the schema is at version {SCHEMA_VERSION}\n"
    )
    again = cli(url, "migrate")
    assert again.out == (
        f"squidmesh: schema is up to date (version {SCHEMA_VERSION}) in {database} (schema squidmesh); "
        "nothing to apply\n"
    )
    mesh, clock = local_mesh(url)
    try:
        found = {
            "done": completed(mesh, clock, "one-ring"),
            "council": to_council(mesh, clock, "council-ring"),
            "reject": to_council(mesh, clock, "spare-ring"),
        }
        pause = mesh.start_run(ring_errand, {"ring_id": "pause-ring", "started_on": "2030-01-01"})
        clock.advance(5)
        mesh.drain()
        found["pause"] = str(pause.id)
        found["failed"] = str(mesh.start_run("doomed").id)
        buggy = mesh.start_run("buggy")
        mesh.send_event(buggy.id, "go")
        found["suspended"] = str(buggy.id)
        found["listener"] = str(mesh.start_run("listener").id)
        found["waiting"] = str(mesh.start_run("listener").id)
        statuses = {role: mesh.inspect_run(rid).status.value for role, rid in found.items()}
        assert statuses == {
            "done": "completed",
            "council": "paused",
            "reject": "paused",
            "pause": "paused",
            "failed": "failed",
            "suspended": "suspended",
            "listener": "running",
            "waiting": "running",
        }
        yield found
    finally:
        mesh.close()


# --------------------------------------------------------------------------- reading


def test_runs_list_table_json_and_paging(url: str, runs: dict[str, str]) -> None:
    table = cli(url, "runs", "list")
    assert table.code == 0, table.err
    header, *rows = table.out.splitlines()
    assert header.split() == ["ID", "WORKFLOW", "STATUS", "CREATED", "DETAIL"]
    for run_id in runs.values():
        assert any(row.startswith(run_id) for row in rows), run_id
    (done_row,) = [row for row in rows if row.startswith(runs["done"])]
    assert "completed" in done_row and "Frodo crossed Moria on 11 lembas" in done_row
    # columns are aligned: STATUS starts at the same offset in every row
    offset = header.index("STATUS")
    assert all(row[offset - 2 : offset] == "  " for row in rows if row.strip())

    paused = cli(url, "runs", "list", "--status", "paused", "--json")
    assert paused.code == 0, paused.err
    data = paused.json()
    assert sorted(data) == ["next_before", "runs"]
    assert {r["id"] for r in data["runs"]} == {runs["council"], runs["reject"], runs["pause"]}
    assert paused.out.strip() == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False)
    first = data["runs"][0]
    assert sorted(first) == [
        "continued_as_run_id",
        "continued_from_run_id",
        "created_at",
        "current_steps",
        "error",
        "forked_from_run_id",
        "id",
        "idempotency_key",
        "parent_run_id",
        "payload",
        "reason",
        "replayed_from_run_id",
        "result",
        "schedule",
        "status",
        "trigger",
        "updated_at",
        "workflow",
    ]
    assert datetime.fromisoformat(first["created_at"]).tzinfo is not None

    page1 = cli(url, "runs", "list", "--workflow", "ring_errand", "--limit", "2", "--json").json()
    assert len(page1["runs"]) == 2 and page1["next_before"] == page1["runs"][-1]["id"]
    page2 = cli(
        url,
        "runs",
        "list",
        "--workflow",
        "ring_errand",
        "--limit",
        "10",
        "--json",
        "--before",
        page1["next_before"],
    ).json()
    ids = [r["id"] for r in page1["runs"] + page2["runs"]]
    ring_ids = {runs[k] for k in ("done", "council", "reject", "pause")}
    assert len(ids) == len(set(ids)) and set(ids) == ring_ids
    assert page2["next_before"] is None


def test_runs_show_explain_history(url: str, runs: dict[str, str], tmp_path: Path) -> None:
    show = cli(url, "runs", "show", runs["done"])
    assert show.code == 0, show.err
    assert f"run         {runs['done']}" in show.out
    assert "step runs" in show.out and "audit events" in show.out
    step_rows = [line.split() for line in show.out.splitlines() if line.startswith("  ")]
    assert ["5", "step", "cross_moria", "completed", "1:completed"] == step_rows[
        [r[2] if len(r) > 2 else "" for r in step_rows].index("cross_moria")
    ][:5]
    assert "info: Leaving the Shire" in show.out
    assert any(r[1:4] == ["approved", "council_vote", "elrond"] for r in step_rows if len(r) > 3)

    full = cli(url, "runs", "show", runs["failed"], "--json").json()
    assert full["status"] == "failed" and full["workflow"] == "doomed"
    (fall,) = full["step_runs"]
    assert fall["attempts"][0]["status"] == "failed"
    assert fall["attempts"][0]["error"]["message"] == "fell over: no retries"
    assert [e["type"] for e in full["audit_events"]] == ["run_started"]
    assert {"steps", "step_runs", "audit_events"} <= set(full)

    failed_table = cli(url, "runs", "show", runs["failed"])
    assert "attempt 1 failed: builtins.RuntimeError: fell over: no retries" in failed_table.out

    explain = cli(url, "runs", "explain", runs["council"])
    assert explain.code == 0, explain.err
    assert "paused_for_approval" in explain.out
    assert "next actions  approve_run, reject_run, cancel_run" in explain.out
    why = cli(url, "runs", "explain", runs["failed"], "--json").json()
    assert sorted(why) == [
        "details",
        "evidence",
        "next_actions",
        "reason",
        "run_id",
        "status",
        "step",
    ]
    assert (why["run_id"], why["status"], why["reason"], why["step"]) == (
        runs["failed"],
        "failed",
        "retry_exhausted",
        "fall_over",
    )
    assert why["next_actions"] == ["replay_run", "fork_run"]

    history = cli(url, "runs", "history", runs["done"]).json()
    assert history["run_id"] == runs["done"] and history["outcome"] == "completed"
    replay(ring_errand, history)  # the export replays against the code
    out = tmp_path / "done.json"
    written = cli(url, "runs", "history", runs["done"], "--out", str(out))
    assert written.code == 0 and written.out == ""
    assert "wrote 13 history entries" in written.err
    assert json.loads(out.read_text()) == history


# --------------------------------------------------------------------------- acting


def test_runs_show_and_explain_a_parent_with_published_state(
    url: str, runs: dict[str, str]
) -> None:
    mesh, _ = local_mesh(url)
    try:
        parent = str(mesh.start_run("sender").id)
        (child,) = mesh.list_runs(workflow="errand_boy")
    finally:
        mesh.close()
    shown = cli(url, "runs", "show", parent)
    assert shown.code == 0, shown.err
    assert "published" in shown.out and 'progress  {"of": 1, "sent": 1}' in shown.out
    assert "child runs" in shown.out
    row = next(line for line in shown.out.splitlines() if str(child.id) in line)
    assert row.split()[:6] == ["1", str(child.id), "errand_boy", "paused", "-", "attached"]
    data = cli(url, "runs", "show", parent, "--json").json()
    assert data["published"] == {"progress": {"sent": 1, "of": 1}}
    assert [c["run_id"] for c in data["children"]] == [str(child.id)]
    child_data = cli(url, "runs", "show", str(child.id), "--json").json()
    assert child_data["parent_run_id"] == parent
    child_out = cli(url, "runs", "show", str(child.id)).out
    assert re.search(rf"^parent run +{parent}$", child_out, re.MULTILINE), child_out
    why = cli(url, "runs", "explain", parent, "--json").json()
    assert why["reason"] == "waiting_for_child"
    assert why["details"]["child_run_id"] == str(child.id)
    assert why["details"]["child_reason"] == "paused_for_approval"


def test_review_unblock_cancel(url: str, runs: dict[str, str]) -> None:
    approved = cli(
        url,
        "runs",
        "approve",
        runs["council"],
        "--actor",
        "elrond",
        "--comment",
        "the council agrees",
        "--metadata",
        '{"vote": "9-0"}',
    )
    assert approved.code == 0, approved.err
    assert approved.out.strip() == (
        f"approved run {runs['council']}: now completed, result Frodo crossed Moria on 11 lembas"
    )
    shown = cli(url, "runs", "show", runs["council"], "--json").json()
    (event,) = [e for e in shown["audit_events"] if e["type"] == "approved"]
    assert (event["actor"], event["comment"], event["metadata"]) == (
        "elrond",
        "the council agrees",
        {"vote": "9-0"},
    )

    rejected = cli(url, "runs", "reject", runs["reject"], "--actor", "boromir", "--json")
    assert rejected.code == 0, rejected.err
    assert (rejected.json()["status"], rejected.json()["result"]) == ("completed", "went home")

    unblocked = cli(
        url, "runs", "unblock", runs["pause"], "--actor", "strider", "--data", '{"a": 1}'
    )
    assert unblocked.code == 0, unblocked.err
    assert "now paused, waiting on council_vote" in unblocked.out

    # approving a run that is not at an approval: exit 4, one line
    refused = cli(url, "runs", "approve", runs["waiting"], "--actor", "elrond")
    assert refused.code == 4
    assert "it is running" in one_error_line(refused)
    no_actor = cli(url, "runs", "approve", runs["pause"], "--actor", " ")
    assert no_actor.code == 4 and "actor" in one_error_line(no_actor)

    cancelled = cli(
        url, "runs", "cancel", runs["waiting"], "--actor", "gandalf", "--reason", "fly", "--json"
    )
    assert cancelled.code == 0, cancelled.err
    assert cancelled.json()["status"] == "cancelled"
    again = cli(url, "runs", "cancel", runs["waiting"])
    assert again.code == 4 and "already cancelled" in one_error_line(again)


def test_replay_fork_resume_send_event(url: str, runs: dict[str, str]) -> None:
    unsafe = cli(url, "runs", "replay", runs["done"])
    assert unsafe.code == 4
    line = one_error_line(unsafe)
    assert "insult_sauron, toss_ring" in line and "--allow-irreversible" in line
    replayed = cli(url, "runs", "replay", runs["done"], "--allow-irreversible", "--json").json()
    assert replayed["replayed_from_run_id"] == runs["done"] and replayed["id"] != runs["done"]

    forked = cli(url, "runs", "fork", runs["done"], "--at-seq", "5", "--json").json()
    assert forked["forked_from_run_id"] == runs["done"]
    assert (forked["status"], forked["result"]) == ("completed", "Frodo crossed Moria on 11 lembas")
    out_of_range = cli(url, "runs", "fork", runs["done"], "--at-seq", "99")
    assert out_of_range.code == 2 and "at_seq" in one_error_line(out_of_range)

    # the code is still wrong: resuming suspends the run again, and that is no success
    resumed = cli(url, "runs", "resume", runs["suspended"])
    assert resumed.code == 1 and resumed.out == "", resumed
    assert one_error_line(resumed) == (
        f"squidmesh: error: resumed run {runs['suspended']}, but the run is now suspended "
        "(workflow_error): builtins.KeyError: 'a bug in the workflow code'; "
        f"see `squidmesh runs explain {runs['suspended']}`"
    )
    not_suspended = cli(url, "runs", "resume", runs["done"])
    assert not_suspended.code == 4 and "not suspended" in one_error_line(not_suspended)

    sent = cli(
        url,
        "runs",
        "send-event",
        runs["listener"],
        "ring_found",
        "--data",
        '{"where": "river"}',
        "--json",
    )
    assert sent.code == 0, sent.err
    assert (sent.json()["status"], sent.json()["result"]) == (
        "completed",
        {"got": {"where": "river"}},
    )


def test_errors_are_one_line_with_exit_codes(url: str, runs: dict[str, str]) -> None:
    missing = cli(url, "runs", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.code == 3 and missing.out == ""
    database = url.replace("postgresql+psycopg://", "postgresql://")
    assert one_error_line(missing) == (
        "squidmesh: error: run 00000000-0000-0000-0000-000000000000 not found; the database "
        f"is {database} (schema squidmesh); `squidmesh runs list` shows its runs"
    )
    not_uuid = cli(url, "runs", "explain", "frodo")
    assert not_uuid.code == 3 and "not found" in one_error_line(not_uuid)
    assert cli(url, "runs", "approve", "frodo", "--actor", "x").code == 3
    unknown_wf = cli(url, "runs", "start", "no_such_workflow")
    assert unknown_wf.code == 3 and "no_such_workflow" in one_error_line(unknown_wf)

    for argv in (
        ["runs", "list", "--limit", "0"],
        ["runs", "frobnicate"],
        ["runs", "approve", runs["pause"]],  # --actor is required
        ["runs", "unblock", runs["pause"], "--data", "{not json"],
    ):
        bad = cli(url, *argv)
        assert bad.code == 2, (argv, bad)
        assert "(see 'squidmesh" in one_error_line(bad)
    bad_payload = cli(url, "runs", "start", "ring_errand", "--payload", '{"bearer": "Sam"}')
    assert bad_payload.code == 2 and "ring_id" in one_error_line(bad_payload)
    bad_app = cli(url, "runs", "list", app="tests.cli.no_such_app:mesh")
    assert bad_app.code == 2 and "no_such_app" in one_error_line(bad_app)


def test_runs_start_and_drain(url: str, runs: dict[str, str]) -> None:
    started = cli(url, "runs", "start", "listener", "--idempotency-key", "k-1", "--json")
    assert started.code == 0, started.err
    again = cli(url, "runs", "start", "listener", "--idempotency-key", "k-1", "--json")
    assert again.json()["id"] == started.json()["id"]
    assert (started.json()["status"], started.json()["current_steps"]) == (
        "running",
        ["ring_found"],
    )
    drained = cli(url, "drain", "--json")
    assert drained.code == 0 and drained.json() == {"jobs": 0}


# --------------------------------------------------------------------------- code


def test_graph_formats(url: str, runs: dict[str, str]) -> None:
    mermaid = cli(url, "graph", "ring_errand", "--format", "mermaid")
    assert mermaid.code == 0, mermaid.err
    assert mermaid.out.startswith("flowchart") and "council_vote" in mermaid.out
    dot = cli(None, "graph", "examples.ring_errand:ring_errand", "--format", "dot", app=None)
    assert dot.code == 0, dot.err
    assert dot.out.startswith("digraph") and "toss_ring" in dot.out
    graph = cli(url, "graph", "ring_errand", "--format", "json").json()
    assert {"nodes", "edges"} <= set(graph)
    assert any("cross_moria" in json.dumps(n) for n in graph["nodes"])
    unknown = cli(url, "graph", "no_such_workflow")
    assert unknown.code == 3 and "no_such_workflow" in one_error_line(unknown)
    bad_format = cli(url, "graph", "ring_errand", "--format", "png")
    assert bad_format.code == 2


def test_check_lints_modules() -> None:
    lines = HAZARDS.read_text().splitlines()

    def line_of(marker: str) -> int:
        return next(i for i, text in enumerate(lines, 1) if marker in text)

    hazards = cli(None, "check", "tests.cli.hazards", app=None)
    assert hazards.code == 1, hazards.err
    found = hazards.out.splitlines()
    assert found[-1] == "3 finding(s) in 1 workflow(s): hazardous"
    for marker in ("time.time()", "random.random()", 'greet("nobody")'):
        prefix = f"tests/cli/hazards.py:{line_of(marker)} SM"
        assert any(f.startswith(prefix) for f in found), (marker, found)
    assert all(f.endswith(")") for f in found[:-1])  # each finding carries its hint

    as_json = cli(None, "check", str(HAZARDS), "--json", app=None)
    assert as_json.code == 1
    data = as_json.json()
    assert data["workflows"] == ["hazardous"]
    assert [f["lineno"] for f in data["findings"]] == [
        line_of("time.time()"),
        line_of("random.random()"),
        line_of('greet("nobody")'),
    ]
    assert sorted(data["findings"][0]) == ["code", "file", "hint", "lineno", "message", "workflow"]

    clean = cli(None, "check", "squidmesh.demo", app=None)
    assert clean.code == 0, clean.out + clean.err
    assert clean.out.strip() == "1 workflow(s) checked, no findings: ring_errand"
    nothing = cli(None, "check", "tests.cli.workflows", app=None)
    assert nothing.code == 0, nothing.out
    missing = cli(None, "check", "tests.cli.no_such_module", app=None)
    assert missing.code == 3 and "no_such_module" in one_error_line(missing)


# --------------------------------------------------------------------------- operations


def test_check_deploy_finds_runs_broken_by_new_code(pg_database_url: str) -> None:
    url = postgres.sqlalchemy_url(pg_database_url)
    mesh, clock = local_mesh(url)
    try:
        mesh.migrate()
        done = completed(mesh, clock, "done-ring")  # terminal: not checked
        council = to_council(mesh, clock, "council-ring")
        listening = str(mesh.start_run("listener").id)
    finally:
        mesh.close()

    v1 = cli(url, "check-deploy")
    assert v1.code == 0, v1.err
    database = url.replace("postgresql+psycopg://", "postgresql://") + " (schema squidmesh)"
    assert v1.out.splitlines() == [
        f"database: {database} (3 run(s) stored, 2 in flight)",
        "2 run(s) in flight replay cleanly: safe to deploy",
    ]
    assert "check-deploy: 2 run(s) checked" in v1.err

    v2 = cli(url, "check-deploy", "--batch-size", "1", app=APP_V2)
    assert v2.code == 1, v2.err
    assert council in v2.out and done not in v2.out
    assert "nondeterminism" in v2.out and "2 of 2 run(s) in flight would break" in v2.out
    assert [line for line in v2.err.splitlines() if "run(s) checked" in line] == [
        "squidmesh: check-deploy: 1 run(s) checked",
        "squidmesh: check-deploy: 2 run(s) checked",
    ]
    report = cli(url, "check-deploy", "--json", app=APP_V2).json()
    assert (report["checked"], report["ok"]) == (2, False)
    assert report["database"] == {"label": database, "runs": 3, "in_flight": 2}
    problems = {p["run_id"]: p for p in report["problems"]}
    assert problems[council]["kind"] == "nondeterminism"
    assert (problems[council]["workflow"], problems[council]["seq"]) == ("ring_errand", 1)
    assert "sleep" in problems[council]["expected"] and "log" in problems[council]["recorded"]
    # v2 does not register `listener` at all
    assert problems[listening]["kind"] == "unregistered"


def test_prune_deletes_old_finished_runs_only(pg_database_url: str) -> None:
    url = postgres.sqlalchemy_url(pg_database_url)
    old, old_clock = local_mesh(url, ago=timedelta(days=30))
    recent, recent_clock = local_mesh(url)
    try:
        old.migrate()
        old_done = completed(old, old_clock, "old-ring")
        old_failed = str(old.start_run("doomed").id)
        old_paused = to_council(old, old_clock, "old-waiting-ring")
        recent_done = completed(recent, recent_clock, "new-ring")

        only_failed = cli(url, "prune", "--older-than", "7", "--status", "failed")
        assert only_failed.code == 0, only_failed.err
        assert only_failed.out.strip() == "pruned 1 run(s) older than 7 day(s) (failed)"
        assert "prune: 1 run(s) deleted" in only_failed.err
        rest = cli(url, "prune", "--older-than", "7", "--json")
        assert rest.code == 0, rest.err
        assert rest.json() == {
            "deleted": 1,
            "older_than_days": 7.0,
            "statuses": ["completed", "cancelled", "failed"],
        }
        for gone in (old_done, old_failed):
            with pytest.raises(sm.RunNotFoundError):
                recent.inspect_run(gone)
        assert recent.inspect_run(old_paused).status == "paused"
        assert recent.inspect_run(recent_done).status == "completed"
        assert cli(url, "prune", "--older-than", "7", "--status", "paused").code == 2
    finally:
        old.close()
        recent.close()


def test_worker_runs_jobs_and_drains_on_sigterm(pg_database_url: str) -> None:
    url = postgres.sqlalchemy_url(pg_database_url)
    mesh = sm.Mesh(url, workflows=WORKFLOWS)  # DatabaseExecutor: jobs wait for a worker
    try:
        mesh.migrate()
        run = mesh.start_run("doomed")
        assert mesh.inspect_run(run.id).status == "pending"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SQUIDMESH_")}
        env.update(SQUIDMESH_DATABASE_URL=url, SQUIDMESH_APP=APP)
        worker = subprocess.Popen(
            [sys.executable, "-m", "squidmesh.cli", "worker", "--poll-interval", "0.2"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while mesh.inspect_run(run.id).status != "failed":
                assert time.monotonic() < deadline, "the worker did not run the job"
                assert worker.poll() is None, worker.communicate()
                time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert "SIGTERM received, draining" in err
    finally:
        mesh.close()


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    demo = cli(None, "--database-url", url, "demo", app=None)
    assert demo.code == 0, demo.err
    assert "approve_run(actor='elrond'" in demo.out
    assert "paused_for_approval" in demo.out
    # the story it tells happens: a retry, then a compensation, then the way home
    assert "-> run is retrying: waiting_for_retry at cross_moria" in demo.out
    assert "last_error=ConnectionError: the Watcher in the Water" in demo.out
    rows = {
        cells[2]: cells
        for cells in (line.split() for line in demo.out.splitlines())
        if len(cells) == 7 and cells[1] == "step"
    }
    assert rows["cross_moria"][3:5] == ["failed", "1:failed,2:failed"]
    assert rows["walk_home"][3:5] == ["completed", "1:completed"]
    assert "compensation completed: returned 11 lembas" in demo.out
    assert "the run is completed; result: 'retreated'" in demo.out
    assert "toss_ring" not in demo.out  # the errand turned back before the end
    # the closing hint says that drain (or a worker) moves the run on, with the commands
    assert "squidmesh drain" in demo.out and "squidmesh worker" in demo.out
    assert "squidmesh migrate" in demo.out
    # The errand's 5 s sleep and the 1 s retry backoff took no real time: the demo kept
    # its run, and every time in it is on the virtual clock the demo moves by hand.
    with demo_app(url) as kept:
        (run,) = kept.list_runs()
        history = kept.inspect_run(run.id, include_history=True)
    at = {s.name: s for s in history.step_runs or ()}

    def virtual(seconds: float) -> str:
        return (DEMO_T0 + timedelta(seconds=seconds)).isoformat()

    assert run.created_at == DEMO_T0
    assert (at["sleep"].started_at, at["sleep"].completed_at) == (virtual(0), virtual(5))
    # approved 60 s (virtual) after the pause; attempt 2 one backoff second after attempt 1
    assert [a.started_at for a in at["cross_moria"].attempts] == [virtual(65), virtual(66)]
    assert run.status == "completed" and run.updated_at == DEMO_T0 + timedelta(seconds=66)
