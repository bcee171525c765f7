from __future__ import annotations

# Telemetry across processes: a real `squidmesh worker` (PostgreSQL) continues the trace
# a run was started in by this process, and logs one JSON line per step attempt start and
# end, per run transition and per sm.log message; `squidmesh drain` logs Celery-like text.
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import squidmesh as sm
from tests.support import postgres
from tests.support.waiting import wait_for
from tests.telemetry.conftest import Otel
from tests.telemetry.flows import order

REPO_ROOT = Path(__file__).resolve().parents[2]
SQUIDMESH = Path(sys.executable).with_name("squidmesh")


def _env(url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["SQUIDMESH_TEST_URL"] = url
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("SQUIDMESH_APP", None)
    env.pop("SQUIDMESH_DATABASE_URL", None)
    env.update(extra)
    return env


@pytest.fixture
def pg_url(pg_server_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    libpq = postgres.create_database(pg_server_url, f"tel_{request.node.name}")
    url = postgres.sqlalchemy_url(libpq)
    try:
        with sm.Mesh(url) as mesh:
            mesh.migrate()
        yield url
    finally:
        postgres.drop_database(libpq)


def _json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


@pytest.mark.postgres
def test_a_worker_process_continues_the_trace_and_logs_json(
    otel: Otel, pg_url: str, tmp_path: Path
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    log_file = tmp_path / "worker.log"
    with sm.Mesh(pg_url, workflows=[order]) as mesh:
        with otel.tracer.start_as_current_span("POST /orders") as request:
            run = mesh.start_run(order)
        with open(log_file, "wb") as out:
            proc = subprocess.Popen(
                [
                    str(SQUIDMESH),
                    "--app",
                    "tests.telemetry.otel_app:mesh",
                    "worker",
                    "--concurrency",
                    "1",
                    "--log-format",
                    "json",
                ],
                cwd=REPO_ROOT,
                env=_env(pg_url, SPANS_FILE=str(spans_file)),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(
                lambda: mesh.inspect_run(run.id).status == "completed" or proc.poll() is not None,
                60,
                "the worker to complete the run",
            )
            assert mesh.inspect_run(run.id).status == "completed", log_file.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    output = log_file.read_text()
    assert proc.returncode == 0, output

    # Spans: every one the worker made is in the trace of the test's request, under the
    # squidmesh.start_run span this process made.
    (start,) = otel.named("squidmesh.start_run")
    trace_id = request.get_span_context().trace_id
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert {s["pid"] for s in spans} == {proc.pid}
    assert {s["trace_id"] for s in spans} == {trace_id}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    assert sorted(by_name) == [
        "POST /payments",
        "squidmesh.activate order",
        "squidmesh.step charge",
        "squidmesh.step ship",
    ]
    for name in ("squidmesh.activate order", "squidmesh.step charge", "squidmesh.step ship"):
        for span in by_name[name]:
            assert span["parent_id"] == start.context.span_id, span
            assert span["attributes"]["squidmesh.run_id"] == str(run.id)
    (payment,) = by_name["POST /payments"]
    assert payment["parent_id"] == by_name["squidmesh.step charge"][0]["span_id"]

    # Logs: one JSON object per line, with the fields in "squidmesh".
    records = _json_lines(output)
    steps = [r for r in records if r["logger"] == "squidmesh.step"]
    assert [(r["squidmesh"]["event"], r["squidmesh"]["step"]) for r in steps] == [
        ("step.started", "charge"),
        ("step.completed", "charge"),
        ("step.started", "ship"),
        ("step.completed", "ship"),
    ]
    for record in steps:
        fields = record["squidmesh"]
        assert fields["run_id"] == str(run.id) and fields["workflow"] == "order"
        assert fields["attempt"] == 1 and fields["seq"] in (0, 2)
        assert record["level"] == "INFO" and record["process"] == proc.pid
    completed = [r["squidmesh"] for r in steps if r["squidmesh"]["event"] == "step.completed"]
    assert all(f["outcome"] == "completed" and f["duration"] >= 0 for f in completed)
    runs = [r for r in records if r["logger"] == "squidmesh.run"]
    assert [(r["squidmesh"]["from_status"], r["squidmesh"]["status"]) for r in runs] == [
        ("pending", "running"),
        ("running", "completed"),
    ]
    (said,) = [r for r in records if r["logger"] == "squidmesh.workflow"]
    assert said["message"] == "charged"
    assert said["squidmesh"]["amount"] == 3 and said["squidmesh"]["run_id"] == str(run.id)
    assert any(r["logger"] == "squidmesh.worker" and "starting" in r["message"] for r in records)


def test_drain_logs_celery_like_text(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'text.db'}"
    with sm.Mesh(url, workflows=[order]) as mesh:
        run = mesh.start_run(order)
    done = subprocess.run(
        [str(SQUIDMESH), "--app", "tests.telemetry.otel_app:mesh", "drain", "--json"],
        cwd=REPO_ROOT,
        env=_env(url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"jobs": 3}  # stdout stays the command's output
    lines = done.stderr.splitlines()
    rid = str(run.id)
    expected = [
        f"squidmesh.run: run order[{rid}] pending -> running",
        f"squidmesh.step: step order.charge[{rid}] seq 0 attempt 1 started",
        f"squidmesh.step: step order.charge[{rid}] seq 0 attempt 1 completed in ",
        "squidmesh.workflow: charged",
        f"squidmesh.step: step order.ship[{rid}] seq 2 attempt 1 started",
        f"squidmesh.step: step order.ship[{rid}] seq 2 attempt 1 completed in ",
        f"squidmesh.run: run order[{rid}] running -> completed",
    ]
    assert len(lines) == len(expected), done.stderr
    for line, start in zip(lines, expected, strict=True):
        head, _, rest = line.partition("] ")
        # [2030-01-01 12:00:00,000: INFO/MainThread]
        assert head.startswith("[") and ": INFO/" in head, line
        time.strptime(head[1:20], "%Y-%m-%d %H:%M:%S")
        assert rest.startswith(start), line

    quiet = subprocess.run(
        [
            str(SQUIDMESH),
            "--app",
            "tests.telemetry.otel_app:mesh",
            "drain",
            "--log-level",
            "WARNING",
        ],
        cwd=REPO_ROOT,
        env=_env(url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
