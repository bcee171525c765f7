"""B5 scale: 100,000 stored runs; ``list_runs``, ``explain_run`` and the operator
console's run list page: latency and plans.

The runs are bulk-loaded with ``COPY`` into squidmesh's tables (a realistic status mix
over 20 workflows, skewed, created over 90 days), a few hundred of them with histories
(entries, attempts, audit events) taken from a real run of the ``sequence`` workflow;
then ``ANALYZE``. Latencies are through the public Mesh API (transaction included), p50
over 50 calls each. The plans are ``EXPLAIN (ANALYZE, BUFFERS)`` of the exact SQL and
parameters squidmesh sent (captured from its engine), so they show what the store runs.

The console's run list page (``GET /`` and ``GET /?status=paused`` of
``squidmesh.web.console``: rows, status counts, HTML) is timed through the ASGI app with
httpx's ``ASGITransport``, thread pool hop and rendering included. It is timed twice:
right after the bulk load (diagnostic: no visibility map yet, so its capped status counts
visit the heap for every index entry) and after ``VACUUM``, the state autovacuum keeps a
table in (the headline: index-only counts).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from benchmarks import flows
from benchmarks.common import Databases, Measure, percentile
from benchmarks.harness import open_mesh
from squidmesh.testing import WorkflowTester

__all__ = ["run"]

TARGET_MS = 10.0  # p50, "stays in milliseconds"

STATUS_MIX = (
    ("completed", 72),
    ("failed", 6),
    ("cancelled", 3),
    ("running", 8),
    ("paused", 5),
    ("pending", 2),
    ("retrying", 2),
    ("suspended", 1),
    ("cancelling", 1),
)
WORKFLOWS = [f"workflow_{i:02d}" for i in range(20)]
WORKFLOW_WEIGHTS = [1 / (i + 1) for i in range(20)]  # Zipf-like: a few dominate

RUN_COLUMNS = (
    "id, workflow, trigger, status, payload, result, error, reason, current_steps, "
    "waiting_on, idempotency_key, version, created_at, updated_at"
)
ENTRY_COLUMNS = (
    "run_id, seq, kind, name, status, input, result, error, parent, ord, attempts, meta, "
    "compensation, loc, wake_at, created_at, started_at, completed_at"
)
ATTEMPT_COLUMNS = "run_id, seq, number, status, error, started_at, finished_at"
AUDIT_COLUMNS = "run_id, type, step, actor, comment, metadata, at"
EVENT_COLUMNS = "run_id, name, data, created_at"
EVENTS = 5000  # buffered events (sent before the run waited), on waiting runs


def _j(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _load(url: str, runs: int, with_history: int) -> dict[str, Any]:
    rng = random.Random(20240601)
    now = datetime.now(timezone.utc)
    statuses = [s for s, _ in STATUS_MIX]
    weights = [w for _, w in STATUS_MIX]
    template = WorkflowTester(flows.sequence, replay_each_command=False).start({"steps": 20})
    entries = template.history.entries
    history_ids: list[str] = []
    waiting_ids: list[str] = []
    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY squidmesh.squidmesh_runs ({RUN_COLUMNS}) FROM STDIN") as copy:
            for i in range(runs):
                has_history = i < with_history
                if has_history:
                    status = "completed" if i % 3 else "running"
                    workflow = flows.sequence.name
                else:
                    status = rng.choices(statuses, weights)[0]
                    workflow = rng.choices(WORKFLOWS, WORKFLOW_WEIGHTS)[0]
                counts[status] = counts.get(status, 0) + 1
                created = now - timedelta(seconds=rng.uniform(0, 90 * 86400))
                run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                if has_history:
                    history_ids.append(run_id)
                waiting = status in ("running", "paused", "retrying", "pending")
                if waiting:
                    waiting_ids.append(run_id)
                copy.write_row(
                    (
                        run_id,
                        workflow,
                        "manual",
                        status,
                        _j({"steps": 20} if has_history else {"order": i, "customer": i % 977}),
                        _j(sum(range(20)) if status == "completed" else None),
                        _j(
                            {"type": "ValueError", "message": "boom"}
                            if status in ("failed", "suspended")
                            else None
                        ),
                        status if status in ("completed", "failed", "cancelled") else None,
                        _j(["noop"] if waiting else []),
                        _j([19] if waiting else []),
                        f"key-{i}" if i % 10 == 0 else None,
                        21 if has_history else rng.randint(1, 40),
                        created,
                        created + timedelta(seconds=rng.uniform(0, 600)),
                    )
                )
        if history_ids:
            with cur.copy(f"COPY squidmesh.squidmesh_entries ({ENTRY_COLUMNS}) FROM STDIN") as copy:
                for n, run_id in enumerate(history_ids):
                    running = n % 3 == 0
                    for e in entries:
                        last_pending = running and e.seq == len(entries) - 1
                        copy.write_row(
                            (
                                run_id,
                                e.seq,
                                e.kind,
                                e.name,
                                "pending" if last_pending else e.status,
                                _j(e.input),
                                None if last_pending else _j(e.result),
                                _j(e.error),
                                e.parent,
                                None if last_pending else e.order,
                                0 if last_pending else e.attempts,
                                _j(e.meta),
                                _j(e.compensation),
                                e.loc,
                                e.wake_at,
                                e.created_at,
                                None if last_pending else e.started_at,
                                None if last_pending else e.completed_at,
                            )
                        )
            with cur.copy(
                f"COPY squidmesh.squidmesh_attempts ({ATTEMPT_COLUMNS}) FROM STDIN"
            ) as copy:
                for n, run_id in enumerate(history_ids):
                    for e in entries[: -1 if n % 3 == 0 else None]:
                        copy.write_row(
                            (run_id, e.seq, 1, "completed", None, e.started_at, e.completed_at)
                        )
            with cur.copy(
                f"COPY squidmesh.squidmesh_audit_events ({AUDIT_COLUMNS}) FROM STDIN"
            ) as copy:
                for run_id in history_ids:
                    at = now.isoformat()
                    copy.write_row(
                        (run_id, "run_started", None, None, None, _j({"trigger": "manual"}), at)
                    )
        with cur.copy(f"COPY squidmesh.squidmesh_events ({EVENT_COLUMNS}) FROM STDIN") as copy:
            for i in range(EVENTS if runs >= 50_000 else EVENTS // 10):
                copy.write_row(
                    (
                        rng.choice(waiting_ids),
                        rng.choice(("payment_received", "shipped", "reply")),
                        _j({"n": i}),
                        now - timedelta(seconds=rng.uniform(0, 86400)),
                    )
                )
        conn.commit()
    loaded = time.perf_counter() - t0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        sizes = {
            str(r[0]): int(r[1])
            for r in conn.execute(
                "SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE schemaname = 'squidmesh'"
            )
        }
    return {
        "runs": runs,
        "runs_with_history": len(history_ids),
        "entries_per_history": len(entries),
        "status_counts": dict(sorted(counts.items())),
        "load_seconds": round(loaded, 2),
        "table_rows": sizes,
        "history_ids": history_ids,
    }


class _Capture:
    """The statements (and parameters) squidmesh's engine sends, while attached."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.sent: list[tuple[str, Any]] = []

    def _on(self, conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        self.sent.append((statement, params))

    def __enter__(self) -> _Capture:
        from sqlalchemy import event

        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._on)


def _index_backed(plan: str) -> bool:
    """Every table read goes through an index, or is a sequential scan that a LIMIT
    right above it stops early (PostgreSQL's cheaper choice for a value most rows have,
    as in the console's capped count of ``completed`` runs)."""
    lines = plan.splitlines()
    for at, line in enumerate(lines):
        if "Seq Scan" not in line:
            continue
        depth = len(line) - len(line.lstrip())
        parent = next(
            (
                above
                for above in reversed(lines[:at])
                if "->" in above or not above.startswith(" ")
                if len(above) - len(above.lstrip()) < depth
            ),
            "",
        )
        if "Limit" not in parent:
            return False
    return "Index" in plan


def _explain(engine: Any, statements: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    plans = []
    with engine.connect() as conn:
        for statement, params in statements:
            rows = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, params
            ).fetchall()
            text = "\n".join(str(r[0]) for r in rows)
            plans.append(
                {
                    "sql": " ".join(statement.split()),
                    "params": {k: str(v) for k, v in dict(params or {}).items()},
                    "plan": text,
                    "index_only": _index_backed(text),
                }
            )
        conn.rollback()
    return plans


def _timed(fn: Any, calls: int) -> dict[str, float]:
    fn(0)  # warm
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - t0))
    return {
        "p50_ms": round(percentile(times, 50), 3),
        "p99_ms": round(percentile(times, 99), 3),
        "max_ms": round(max(times), 3),
        "calls": calls,
    }


PAGES = {"console run list page": "/", "console run list page ?status=paused": "/?status=paused"}


def _console_pages(mesh: Any, calls: int) -> dict[str, dict[str, float]] | None:
    """p50/p99 of the console's run list page through its ASGI app (None without the
    web extra)."""
    try:
        import httpx

        from squidmesh.web import console
    except ImportError:
        return None
    app = console(mesh)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b5")
    try:

        def page(path: str) -> Callable[[int], object]:
            def fetch(i: int) -> object:
                response = loop.run_until_complete(client.get(path))
                assert response.status_code == 200, response.status_code
                return response

            return fetch

        return {name: _timed(page(path), calls) for name, path in PAGES.items()}
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


def _page_plans(mesh: Any, engine: Any) -> list[dict[str, Any]]:
    """The plans of the statements one run list page sends."""
    import httpx

    from squidmesh.web import console

    async def once() -> None:
        transport = httpx.ASGITransport(app=console(mesh))
        async with httpx.AsyncClient(transport=transport, base_url="http://b5") as client:
            await client.get("/")

    with _Capture(engine) as cap:
        asyncio.run(once())
    return _explain(
        engine, [(s, p) for s, p in cap.sent if s.lstrip().upper().startswith("SELECT")]
    )


def run(dbs: Databases, *, quick: bool) -> tuple[Measure, dict[str, Any]]:
    runs = 10_000 if quick else 100_000
    with_history = 100 if quick else 300
    calls = 20 if quick else 50
    with dbs.fresh("b5") as url, open_mesh(url) as mesh:
        loaded = _load(url, runs, with_history)
        history_ids = loaded.pop("history_ids")
        workflow = WORKFLOWS[3]
        cases: dict[str, Callable[[int], object]] = {
            "list_runs(status='running')": lambda i: mesh.list_runs(status="running", limit=50),
            "list_runs(status='suspended')": lambda i: mesh.list_runs(status="suspended", limit=50),
            f"list_runs(workflow='{workflow}')": lambda i: mesh.list_runs(
                workflow=workflow, limit=50
            ),
            "list_runs() (no filter)": lambda i: mesh.list_runs(limit=50),
            "explain_run(run with 20 steps)": lambda i: mesh.explain_run(
                history_ids[i % len(history_ids)]
            ),
        }
        latencies = {name: _timed(fn, calls) for name, fn in cases.items()}
        sizes = {
            "list_runs(status='running')": len(mesh.list_runs(status="running", limit=50)),
            f"list_runs(workflow='{workflow}')": len(mesh.list_runs(workflow=workflow, limit=50)),
        }
        engine = mesh.store._raw_engine  # type: ignore[attr-defined]
        plans: dict[str, list[dict[str, Any]]] = {}
        for name in (
            "list_runs(status='running')",
            f"list_runs(workflow='{workflow}')",
            "explain_run(run with 20 steps)",
        ):
            with _Capture(engine) as cap:
                cases[name](1)
            plans[name] = _explain(
                engine, [(s, p) for s, p in cap.sent if s.lstrip().upper().startswith("SELECT")]
            )
        fresh_pages = _console_pages(mesh, calls)
        if fresh_pages is not None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM (ANALYZE) squidmesh.squidmesh_runs")
            pages = _console_pages(mesh, calls) or {}
            latencies.update(pages)
            plans["console run list page"] = _page_plans(mesh, engine)
    worst = max(v["p50_ms"] for v in latencies.values())
    indexed = all(p["index_only"] for group in plans.values() for p in group)
    data = {
        **loaded,
        "latency": latencies,
        "console_pages_before_vacuum": fresh_pages,
        "rows_returned": sizes,
        "plans": plans,
        "all_plans_index_backed": indexed,
    }
    head = latencies["list_runs(status='running')"]["p50_ms"]
    wf = latencies[f"list_runs(workflow='{workflow}')"]["p50_ms"]
    ex = latencies["explain_run(run with 20 steps)"]["p50_ms"]
    page = (
        f", console run list page {latencies['console run list page']['p50_ms']:.1f} ms "
        f"(right after the bulk load, before vacuum: "
        f"{fresh_pages['console run list page']['p50_ms']:.1f} ms)"
        if fresh_pages is not None
        else ", console page not measured (pip install -e '.[web]')"
    )
    return (
        Measure(
            "B5",
            f"scale, {runs:,} runs stored, p50 of {calls}",
            f"list by status {head:.1f} ms, by workflow {wf:.1f} ms, explain_run {ex:.1f} ms"
            f"{page}; plans {'index-backed' if indexed else 'NOT all index-backed'}",
            target=f"p50 < {TARGET_MS:.0f} ms, index scans",
            ratio=f"worst p50 {worst:.1f} ms",
            verdict="met" if worst < TARGET_MS and indexed else "MISSED",
            data=data,
        ),
        data,
    )
