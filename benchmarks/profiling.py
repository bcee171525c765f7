"""Where the time of a sequential step goes (the B1 hot path), for missed targets.

A ``Worker`` whose job thread runs under ``cProfile`` (the claim loop, heartbeat and
LISTEN threads are not profiled; with eager continuation a sequential run stays inside
one ``_perform`` call). From the profile: wall time per step split into time waiting on
PostgreSQL (inside psycopg's execute/commit: round trip + server work + WAL flush) and
Python in the job thread, by package. The SQL statements of one steady-state step are
captured from the engine.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from benchmarks import flows
from benchmarks.common import Databases, SqlCounter, direct_writes
from benchmarks.harness import Completion, open_mesh
from squidmesh.runtime.worker import Worker

__all__ = ["run"]

_DB_WAIT = {
    ("psycopg/cursor.py", "execute"),
    ("psycopg/cursor.py", "executemany"),
    ("psycopg/connection.py", "commit"),
    ("psycopg/connection.py", "rollback"),
}
_BUCKETS = (
    ("psycopg (incl. waiting on PostgreSQL)", "/psycopg/"),
    ("sqlalchemy", "/sqlalchemy/"),
    ("squidmesh.core", "/squidmesh/core/"),
    ("squidmesh.runtime", "/squidmesh/runtime/"),
    ("squidmesh.storage", "/squidmesh/storage/"),
    ("squidmesh (other)", "/squidmesh/"),
    ("pydantic", "/pydantic"),
    ("json", "/json/"),
    ("benchmarks", "/benchmarks/"),
)


class _ProfiledWorker(Worker):
    """A worker whose job thread is profiled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profile = cProfile.Profile()
        #: set after the warm-up: only jobs claimed from then on are profiled
        self.profiling = False

    def _perform(self, job: Any, claimed_at: Any = None) -> None:
        if not self.profiling:
            super()._perform(job, claimed_at)
            return
        profile = self.profile
        profile.enable()
        try:
            super()._perform(job, claimed_at)
        finally:
            profile.disable()


class _Statements:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.sent: list[tuple[float, str]] = []

    def _on(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self.sent.append((time.perf_counter(), " ".join(statement.split())))

    def _on_direct(self, statement: str, _pooled: bool) -> None:
        self._on(None, None, statement)

    def __enter__(self) -> _Statements:
        from sqlalchemy import event

        self._direct = direct_writes(self._on_direct)
        self._direct.__enter__()
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._on)
        self._direct.__exit__(None, None, None)


def _bucket(filename: str) -> str:
    for name, marker in _BUCKETS:
        if marker in filename:
            return name
    if filename.startswith("~") or filename == "~":
        return "builtins (C)"
    return "stdlib/other"


def _summarize(profile: cProfile.Profile, steps: int, wall: float) -> dict[str, Any]:
    stats = pstats.Stats(profile)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    db_wait = 0.0
    total_tottime = 0.0
    buckets: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tottime, cumtime, _callers) in raw.items():
        total_tottime += tottime
        if any(filename.endswith(f) and func == name for f, name in _DB_WAIT):
            db_wait += cumtime
        key = _bucket(filename)
        buckets[key] = buckets.get(key, 0.0) + tottime
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
    top_tottime = out.getvalue()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(35)
    top_cumulative = out.getvalue()
    return {
        "steps": steps,
        "wall_ms_per_step": round(1000 * wall / steps, 3),
        "job_thread_profiled_ms_per_step": round(1000 * total_tottime / steps, 3),
        "db_wait_ms_per_step": round(1000 * db_wait / steps, 3),
        "python_ms_per_step": round(1000 * (total_tottime - db_wait) / steps, 3),
        "tottime_ms_per_step_by_package": {
            k: round(1000 * v / steps, 3) for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])
        },
        "top_tottime": top_tottime,
        "top_cumulative": top_cumulative,
        "note": "cProfile inflates Python time (about 1.5-2x); compare shares, not totals",
    }


def _track_functions(dbs: Databases, url: str) -> None:
    """Server-side timing of PL/pgSQL functions, for this (our own) database only."""
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(dbs.server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET track_functions = 'pl'").format(sql.Identifier(name))
        )


def _function_times(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT schemaname, funcname, calls, total_time, self_time "
            "FROM pg_stat_user_functions ORDER BY total_time DESC"
        ).fetchall()
    return [
        {
            "function": f"{r[0]}.{r[1]}",
            "calls": int(r[2]),
            "total_ms": round(float(r[3]), 2),
            "ms_per_call": round(float(r[3]) / max(int(r[2]), 1), 3),
        }
        for r in rows
    ]


def run(dbs: Databases, *, steps: int = 500) -> dict[str, Any]:
    with dbs.fresh("profile") as url:
        _track_functions(dbs, url)
        summary = _run(url, steps)
        # The Mesh is closed: its sessions ended and flushed their function statistics.
        time.sleep(0.5)
        summary["server_functions"] = _function_times(url)
    return summary


def _run(url: str, steps: int) -> dict[str, Any]:
    with open_mesh(url) as mesh, Completion(url) as done:
        worker = _ProfiledWorker(mesh.runner, concurrency=1, poll_interval=2.0)
        worker.start()
        try:
            flows.PROBE.reset()
            mesh.start_run(flows.sequence, {"steps": 20})  # warm-up
            flows.PROBE.wait_last(1, 60)
            done.wait(1, 60)
            flows.PROBE.reset()
            time.sleep(0.2)  # the warm-up's job has returned
            worker.profiling = True
            engine = mesh.store._raw_engine  # type: ignore[attr-defined]
            with SqlCounter(engine) as sqlc, _Statements(engine) as stmts:
                t0 = time.perf_counter()
                cpu0 = time.process_time()
                mesh.start_run(flows.sequence, {"steps": steps})
                if not flows.PROBE.wait_last(1, 600):
                    raise TimeoutError("profiled run did not reach its last step")
                t1 = done.wait(2, 60)
                cpu = time.process_time() - cpu0
        finally:
            worker.stop()
    wall = t1 - t0
    summary = _summarize(worker.profile, steps, wall)
    summary["client_cpu_ms_per_step_profiled"] = round(1000 * cpu / steps, 3)
    summary["sql_per_step"] = sqlc.per(steps)
    # The statements of one step in the steady state (the middle of the run).
    mid = len(stmts.sent) // 2
    per_step = max(1, round(len(stmts.sent) / steps))
    summary["statements_of_one_step"] = [s[:300] for _, s in stmts.sent[mid : mid + per_step]]
    return summary
