from __future__ import annotations

# The command line guides a newcomer: CLI advice for missing workflows, "did you mean",
# run-id prefixes, one-line (or JSON) errors for every failure, no database created by
# accident, no false success, help with defaults. Subprocesses on SQLite files of their
# own (tmp_path), except where PostgreSQL is the point.
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from squidmesh.storage.base import SCHEMA_VERSION, RunRecord
from tests.cli.test_cli import (
    APP,
    APP_V2,
    APPLIED,
    Clock,
    Result,
    cli,
    local_mesh,
    one_error_line,
    to_council,
)
from tests.support import writes

BARE = None  # no --app: a bare Mesh on --database-url


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.err + result.out, result


def json_error(result: Result, kind: str, code: int) -> dict[str, Any]:
    """The error document of a --json command: on stdout, nothing on stderr."""
    assert result.code == code, result
    assert result.err == "", result.err
    document: dict[str, Any] = result.json()
    error = document["error"]
    assert {"exit_code", "hint", "message", "type"} <= set(error), error
    assert (error["type"], error["exit_code"]) == (kind, code), error
    assert "\n" not in error["message"]
    return document


@pytest.fixture
def db(tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite database (file) with the tests' workflows' tables."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    migrated = cli(url, "migrate", app=BARE)
    assert migrated.code == 0, migrated.err
    yield url


@pytest.fixture
def local(db: str) -> Iterator[tuple[sm.Mesh, Clock]]:
    """An in-process Mesh on the same file, with a clock an hour behind."""
    mesh, clock = local_mesh(db)
    try:
        yield mesh, clock
    finally:
        mesh.close()


@pytest.fixture
def mesh(local: tuple[sm.Mesh, Clock]) -> sm.Mesh:
    return local[0]


@pytest.fixture
def clock(local: tuple[sm.Mesh, Clock]) -> Clock:
    return local[1]


# --------------------------------------------------------------------------- advice


def test_missing_workflows_get_cli_advice_and_suggestions(db: str, mesh: sm.Mesh) -> None:
    paused = str(mesh.start_run("risky").id)

    # no --app: the fix is an option, not Mesh(workflows=[...])
    bare = cli(db, "runs", "approve", paused, "--actor", "elrond", app=BARE)
    assert bare.code == 3
    line = one_error_line(bare)
    assert f"run {paused} belongs to workflow 'risky'" in line
    assert "this bare Mesh (no --app) does not register" in line
    assert "pass --app module:mesh (or set SQUIDMESH_APP)" in line
    assert "Mesh(workflows=" not in line
    start = cli(db, "runs", "start", "risky", app=BARE)
    assert start.code == 2 and "--app module:mesh" in one_error_line(start)

    typo = cli(db, "runs", "start", "ring_erand")
    assert typo.code == 3
    assert one_error_line(typo) == (
        f"squidmesh: error: workflow 'ring_erand' is not registered on the Mesh of --app {APP} "
        "(registered: buggy, doomed, errand_boy, listener, ring_errand, risky, sender); did you mean 'ring_errand'?"
    )
    trigger = cli(db, "runs", "start", "ring_errand", "--trigger", "leave_shir")
    assert trigger.code == 2
    assert "no trigger 'leave_shir' (known: leave_shire, nightly); did you mean 'leave_shire'?" in (
        one_error_line(trigger)
    )
    field = cli(db, "runs", "start", "ring_errand", "--payload", '{"ringid": "x", "bearer": "S"}')
    assert field.code == 2
    line = one_error_line(field)
    assert "missing ring_id; unknown ringid (did you mean ring_id?)" in line
    assert "--payload of trigger leave_shire is a JSON object with ring_id: str (required)" in line
    # the payload's constraint is explained in pydantic's words, not as a wrong type
    short = cli(db, "runs", "start", "ring_errand", "--payload", '{"ring_id": 1}')
    assert "invalid ring_id (expected str: Input should be a valid string)" in (
        one_error_line(short)
    )
    graph = cli(db, "graph", "ring_errand", app=BARE)
    assert graph.code == 3 and "--app module:mesh" in one_error_line(graph)


def test_runs_list_of_an_unknown_workflow_is_an_error(db: str, mesh: sm.Mesh) -> None:
    mesh.start_run("doomed")
    typo = cli(db, "runs", "list", "--workflow", "domed")
    assert typo.code == 3 and typo.out == ""
    line = one_error_line(typo)
    assert "no workflow 'domed': no run of it is stored in sqlite:///" in line
    assert (
        "(registered: buggy, doomed, errand_boy, listener, ring_errand, risky, sender); did you mean 'doomed'?"
        in (line)
    )
    # registered but without runs (here: of that status): an empty list, not an error
    none = cli(db, "runs", "list", "--workflow", "listener")
    assert none.code == 0 and none.out.startswith("(no runs matching --workflow listener in ")
    filtered = cli(db, "runs", "list", "--workflow", "doomed", "--status", "paused")
    assert filtered.code == 0, filtered.err
    assert "(no runs matching --status paused --workflow doomed in sqlite:///" in filtered.out
    # stored but not registered (a bare Mesh registers nothing): its runs are listed
    stored = cli(db, "runs", "list", "--workflow", "doomed", "--json", app=BARE)
    assert stored.code == 0 and len(stored.json()["runs"]) == 1
    unknown = cli(db, "runs", "list", "--workflow", "nope", "--json", app=BARE)
    error = json_error(unknown, "UnknownWorkflowError", 3)["error"]
    assert error["hint"].startswith("pass --app module:mesh")


# --------------------------------------------------------------------------- run ids


def test_run_ids_accept_unique_prefixes(db: str, mesh: sm.Mesh) -> None:
    run_id = str(mesh.start_run("risky").id)
    with mesh.store.transaction() as tx:  # two runs that share their first 8 characters
        for twin in (
            "abcdef12-0000-4000-8000-000000000001",
            "abcdef12-0000-4000-8000-000000000002",
        ):
            writes.insert_run(
                tx,
                RunRecord(
                    id=twin,
                    workflow="doomed",
                    trigger="manual",
                    status="failed",
                    payload={},
                    created_at=mesh.clock(),
                    updated_at=mesh.clock(),
                ),
            )

    shown = cli(db, "runs", "explain", run_id[:8], "--json")
    assert shown.code == 0, shown.err
    assert (shown.json()["run_id"], shown.json()["reason"]) == (run_id, "paused_for_approval")
    assert cli(db, "runs", "show", run_id[:4].upper(), "--json").json()["id"] == run_id
    unique = cli(db, "runs", "show", "abcdef12-0000-4000-8000-000000000001"[:-1] + "1", "--json")
    assert unique.json()["id"] == "abcdef12-0000-4000-8000-000000000001"

    ambiguous = cli(db, "runs", "show", "abcdef12")
    assert ambiguous.code == 2
    assert one_error_line(ambiguous) == (
        "squidmesh: error: run id prefix 'abcdef12' is ambiguous: it matches "
        "abcdef12-0000-4000-8000-000000000001, abcdef12-0000-4000-8000-000000000002; "
        "give more characters of the id"
    )
    as_json = json_error(cli(db, "runs", "cancel", "abcdef12", "--json"), "AmbiguousRunId", 2)
    assert as_json["error"]["candidates"] == [
        "abcdef12-0000-4000-8000-000000000001",
        "abcdef12-0000-4000-8000-000000000002",
    ]

    approved = cli(db, "runs", "approve", run_id[:8], "--actor", "elrond")
    assert approved.code == 1  # the step after the approval fails: see below
    assert mesh.inspect_run(run_id).status == "failed"

    none = cli(db, "runs", "show", "0000beef")
    assert none.code == 3
    assert one_error_line(none).startswith("squidmesh: error: no run id starts with '0000beef'")
    short = cli(db, "runs", "show", "abc")
    assert short.code == 2 and "at least 4 characters" in one_error_line(short)
    junk = cli(db, "runs", "show", "frodo")
    assert junk.code == 3 and "not found" in one_error_line(junk)


# --------------------------------------------------------------------------- JSON errors


def test_every_error_under_json_is_json(db: str, mesh: sm.Mesh) -> None:
    done = str(mesh.start_run("doomed").id)
    cases = [
        (["runs", "list", "--limit", "0", "--json"], "UsageError", 2),
        (["runs", "show", "00000000-0000-0000-0000-000000000000", "--json"], "RunNotFoundError", 3),
        (["runs", "start", "nope", "--json"], "UnknownWorkflowError", 3),
        (["runs", "start", "ring_errand", "--payload", "{}", "--json"], "PayloadError", 2),
        (["runs", "approve", done, "--actor", "x", "--json"], "InvalidTransitionError", 4),
        (["runs", "replay", done, "--json", "--bogus"], "UsageError", 2),
        (["check", "tests.cli.no_such_module", "--json"], "CliError", 3),
    ]
    for argv, kind, code in cases:
        result = cli(db, *argv)
        document = json_error(result, kind, code)
        no_traceback(result)
        assert document["error"]["message"], argv
    payload = json_error(
        cli(db, "runs", "start", "ring_errand", "--payload", "{}", "--json"), "PayloadError", 2
    )
    assert payload["error"]["hint"].startswith("--payload of trigger leave_shire")
    refused = json_error(
        cli(db, "runs", "approve", done, "--actor", "x", "--json"), "InvalidTransitionError", 4
    )
    assert (
        refused["error"]["hint"] == f"`squidmesh runs explain {done}` says what the run can do next"
    )


def test_even_an_unexpected_error_is_json_under_json(db: str, tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text(
        "import squidmesh as sm\n"
        "class Broken(sm.Mesh):\n"
        "    def list_runs(self, **kwargs):\n"
        "        raise ZeroDivisionError('a bug somewhere')\n"
        "def mesh(url):\n"
        "    return Broken(url)\n"
    )
    as_json = cli(db, "runs", "list", "--json", app="broken_app:mesh", cwd=tmp_path)
    error = json_error(as_json, "ZeroDivisionError", 1)["error"]
    assert error["message"] == "ZeroDivisionError: a bug somewhere"
    human = cli(db, "runs", "list", app="broken_app:mesh", cwd=tmp_path)
    assert human.code == 1 and "Traceback" in human.err  # a bug: the traceback helps


def test_database_url_problems_are_one_line(tmp_path: Path) -> None:
    for url, expected in (
        ("not a url", "is not a database URL"),
        ("mysql://app@db/app", "squidmesh stores runs in SQLite or PostgreSQL, not mysql"),
        ("postgresql+asyncpg://app@db/app", "needs the database driver 'asyncpg'"),
        ("postgresql:/app:s3cret@db/app", "'postgresql:/app:***@db/app' is not a database URL"),
    ):
        result = cli(url, "runs", "list", app=BARE)
        assert result.code == 2, (url, result)
        no_traceback(result)
        assert expected in one_error_line(result), (url, result.err)
        assert "s3cret" not in result.err
        as_json = json_error(cli(url, "runs", "list", "--json", app=BARE), "DatabaseURLError", 2)
        assert (
            as_json["error"]["hint"].startswith("use sqlite:///")
            or "psycopg" in (as_json["error"]["hint"])
        )
    # the same through an --app factory that is handed the URL
    factory = cli("not a url", "runs", "list", app=APP)
    assert factory.code == 2 and "is not a database URL" in one_error_line(factory)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- databases


def test_no_command_but_migrate_creates_or_migrates_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    url = f"sqlite:///{missing}"
    for argv, app in (
        (["runs", "list"], BARE),
        (["runs", "show", "abcd1234"], BARE),
        (["check-deploy"], APP),
        (["prune", "--older-than", "30"], BARE),
        (["drain"], APP),
        (["runs", "start", "doomed"], APP),
    ):
        result = cli(url, *argv, app=app)
        assert result.code == 2, (argv, result)
        assert one_error_line(result).startswith(
            f"squidmesh: error: no SQLite database at {missing} ({missing}); squidmesh creates "
            "a database only in `squidmesh migrate`"
        )
        assert not missing.exists(), argv
    # a relative path is shown relative to the working directory, and resolved
    relative = cli("sqlite:///errands.db", "check-deploy", app=APP, cwd=tmp_path)
    assert one_error_line(relative).startswith(
        f"squidmesh: error: no SQLite database at errands.db ({tmp_path / 'errands.db'})"
    )

    # a file that is not a squidmesh database is not migrated behind your back
    empty = tmp_path / "other.db"
    sqlite3.connect(empty).close()
    other = cli(f"sqlite:///{empty}", "check-deploy", app=APP)
    assert other.code == 1
    assert one_error_line(other) == (
        f"squidmesh: error: sqlite:///{empty} has no squidmesh tables; if this is the right "
        "database, run `squidmesh migrate` (with the same --app or --database-url)"
    )
    with sqlite3.connect(empty) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []

    created = cli(url, "migrate", app=APP)
    assert created.code == 0, created.err
    assert created.out == (
        f"squidmesh: applied {APPLIED} to sqlite:///{missing} "
        f"(a new file); the schema is at version {SCHEMA_VERSION}\n"
    )
    deploy = cli(url, "check-deploy", app=APP)
    assert deploy.code == 0, deploy.err
    assert deploy.out.splitlines() == [
        f"database: sqlite:///{missing} (0 run(s) stored, 0 in flight)",
        "0 run(s) in flight replay cleanly: safe to deploy",
        "note: this database holds no runs at all; check that it is the one your application uses",
    ]
    assert f"check-deploy: sqlite:///{missing} holds 0 run(s), 0 in flight" in deploy.err


def test_migrate_says_what_it_applied(tmp_path: Path) -> None:
    first = cli("sqlite:///app.db", "migrate", app=BARE, cwd=tmp_path)
    assert first.out == (
        f"squidmesh: applied {APPLIED} to sqlite:///app.db "
        f"(a new file); the schema is at version {SCHEMA_VERSION}\n"
    )
    second = cli("sqlite:///app.db", "migrate", app=BARE, cwd=tmp_path)
    assert second.out == (
        f"squidmesh: schema is up to date (version {SCHEMA_VERSION}) in sqlite:///app.db; "
        "nothing to apply\n"
    )


# --------------------------------------------------------------------------- false success


def test_actions_that_break_the_run_are_not_reported_as_success(
    db: str, mesh: sm.Mesh, clock: Clock
) -> None:
    council = to_council(mesh, clock, "council-ring")
    # version 2 of the code no longer matches the run's history: the approval is recorded,
    # but the run is suspended with nondeterminism
    approved = cli(db, "runs", "approve", council, "--actor", "elrond", app=APP_V2)
    assert approved.code == 1 and approved.out == ""
    line = one_error_line(approved)
    assert line.startswith(
        f"squidmesh: error: approved run {council}, but the run is now suspended "
        "(nondeterminism): squidmesh.errors.NondeterminismError: run "
    )
    assert "the code now yields sleep 'sleep' at tests/cli/app_v2.py:" in line
    assert "but the history recorded log 'log' at examples/ring_errand.py:" in line
    assert line.endswith(f"; see `squidmesh runs explain {council}`")
    assert mesh.inspect_run(council).status == "suspended"
    # its explanation names both sides; squidmesh's own traceback would be noise
    why = cli(db, "runs", "explain", council[:8]).out
    assert "  expected  sleep 'sleep' at tests/cli/app_v2.py:" in why
    assert "  recorded  log 'log' at examples/ring_errand.py:" in why
    assert "traceback" not in why

    paused = str(mesh.start_run("risky").id)
    failed = cli(db, "runs", "approve", paused, "--actor", "elrond", "--json")
    document = json_error(failed, "RunFailed", 1)
    assert document["error"]["reason"] == "retry_exhausted"
    assert document["error"]["message"].startswith(
        f"approved run {paused}, but the run is now failed (retry_exhausted at fall_over): "
        "builtins.RuntimeError: fell over: after the approval"
    )
    assert document["run"]["id"] == paused and document["run"]["status"] == "failed"

    buggy = str(mesh.start_run("buggy").id)
    sent = cli(db, "runs", "send-event", buggy, "go")
    assert sent.code == 1
    assert "but the run is now suspended (workflow_error): builtins.KeyError" in (
        one_error_line(sent)
    )
    # an event for a run that was suspended already is buffered: that is no failure
    again = cli(db, "runs", "send-event", buggy, "later")
    assert again.code == 0, again.err
    assert again.out.startswith(f"sent event 'later' to run {buggy}: now suspended")

    fine = cli(db, "runs", "approve", to_council(mesh, clock, "good-ring"), "--actor", "elrond")
    assert fine.code == 0 and "now completed" in fine.out


# --------------------------------------------------------------------------- human output


def test_explain_shows_the_last_lines_of_a_traceback(db: str, mesh: sm.Mesh) -> None:
    buggy = mesh.start_run("buggy")
    mesh.send_event(buggy.id, "go")
    explained = cli(db, "runs", "explain", str(buggy.id), env={"COLUMNS": "80"})
    assert explained.code == 0, explained.err
    text = explained.out
    assert "  error  builtins.KeyError: 'a bug in the workflow code'" in text
    assert re.search(r"\n  traceback \(error(, last 6 of \d+ lines)?; --json has it all\)\n", text)
    assert '    File "tests/cli/workflows.py", line' in text  # relative to the working dir
    assert '      raise KeyError("a bug in the workflow code")' in text
    assert text.rstrip().splitlines()[-3].strip() == "KeyError: 'a bug in the workflow code'"
    assert '{"message"' not in text and '"traceback"' not in text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    tb = cli(db, "runs", "explain", str(buggy.id), "--json").json()["details"]["error"]
    assert tb["traceback"].startswith("Traceback (most recent call last):")

    # a failed step keeps its traceback on its attempt
    risky = mesh.start_run("risky")
    mesh.approve_run(risky.id, actor="elrond")
    failed = cli(db, "runs", "explain", str(risky.id)).out
    assert "  error                  builtins.RuntimeError: fell over: after the approval" in failed
    assert "  traceback (attempt 1" in failed
    assert "    RuntimeError: fell over: after the approval" in failed


def test_wide_tables_wrap_to_the_terminal_width(db: str, mesh: sm.Mesh, clock: Clock) -> None:
    run_id = to_council(mesh, clock, "wordy-ring")
    comment = "the council deliberated " + "at great length " * 20 + "and agreed"
    mesh.approve_run(run_id, actor="elrond", comment=comment)
    wide = cli(db, "runs", "show", run_id)  # piped, no COLUMNS: one record per line
    (row,) = [line for line in wide.out.splitlines() if " approved " in line]
    assert comment in row and len(row) > 300
    narrow = cli(db, "runs", "show", run_id, env={"COLUMNS": "120"})
    lines = narrow.out.splitlines()
    assert max(len(line) for line in lines) <= 120, narrow.out
    header = next(line for line in lines if line.strip().startswith("AT "))
    column, end = header.index("COMMENT"), header.index("METADATA")
    start = next(i for i, line in enumerate(lines) if " approved " in line)
    comment_lines = [lines[start][column:end]]
    for line in lines[start + 1 :]:
        if not line.strip() or line[:column].strip():
            break
        comment_lines.append(line[column:end])
    assert len(comment_lines) > 3
    assert " ".join(part.strip() for part in comment_lines) == comment


def test_colour_follows_the_terminal_and_no_color(db: str, mesh: sm.Mesh) -> None:
    mesh.start_run("doomed")
    escape = "\033["
    assert escape not in cli(db, "runs", "list").out  # piped: plain text
    forced = cli(db, "runs", "list", env={"FORCE_COLOR": "1"})
    assert f"{escape}31mfailed{escape}0m" in forced.out  # the status, in red
    assert escape not in cli(db, "runs", "list", env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).out
    assert escape in cli(db, "--color", "always", "runs", "list", env={"NO_COLOR": "1"}).out
    assert escape not in cli(db, "runs", "list", "--json", env={"FORCE_COLOR": "1"}).out
    # the error prefix follows stderr's own terminal test
    failed = cli(db, "runs", "show", "frodo", env={"FORCE_COLOR": "1"})
    assert failed.err.startswith(f"{escape}1;31msquidmesh: error:{escape}0m run 'frodo'")
    # columns stay aligned when coloured: escape codes do not count as width
    plain = [line.split() for line in cli(db, "runs", "list").out.splitlines()]
    painted = [re.sub(r"\033\[[0-9;]*m", "", line).split() for line in forced.out.splitlines()]
    assert plain == painted


def test_help_has_defaults_and_no_markup() -> None:
    top = cli(None, "--help", app=None)
    assert top.code == 0 and "``" not in top.out
    assert 'eval "$(register-python-argcomplete squidmesh)"' in top.out
    worker = cli(None, "worker", "--help", app=None)
    for expected in ("(default: 4)", "(default: 2.0)", "(default: 30.0)"):
        assert expected in " ".join(worker.out.split()), worker.out

    from squidmesh.cli.parser import build_parser

    def every_parser(parser: Any) -> Iterator[Any]:
        yield parser
        for action in parser._actions:
            for sub in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):
                    yield from every_parser(action.choices[sub])

    for parser in every_parser(build_parser()):
        text = " ".join(parser.format_help().split())
        assert "``" not in text, parser.prog
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                assert f"(default: {action.default})" in text, (parser.prog, action.dest)


def test_shell_completion_of_commands_and_workflows(tmp_path: Path) -> None:
    pytest.importorskip("argcomplete")

    def complete(line: str) -> list[str]:
        out = tmp_path / "completions"
        result = cli(
            None,
            app=APP,
            env={
                "_ARGCOMPLETE": "1",
                "_ARGCOMPLETE_IFS": "\n",
                "COMP_LINE": line,
                "COMP_POINT": str(len(line)),
                "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
            },
        )
        assert result.code == 0, result
        return sorted(out.read_text().split())

    assert {"migrate", "runs", "check-deploy", "worker"} <= set(complete("squidmesh "))
    assert complete("squidmesh runs app") == ["approve"]
    assert complete("squidmesh worker --con") == ["--concurrency"]
    assert complete("squidmesh runs start ri") == ["ring_errand", "risky"]
    assert complete("squidmesh runs start ring_errand --trigger ") == ["leave_shire", "nightly"]
    assert complete("squidmesh runs list --status pa") == ["paused"]


def test_an_empty_list_under_json_is_json(db: str) -> None:
    # not the human "(no runs in ...)" line
    result = cli(db, "runs", "list", "--json")
    assert json.loads(result.out) == {"next_before": None, "runs": []}
