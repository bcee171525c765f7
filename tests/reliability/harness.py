"""The mixed workload of the crash harness, run by real ``squidmesh worker`` processes:

    SQUIDMESH_RELIABILITY_URL=postgresql+psycopg://... \\
        squidmesh --app tests.reliability.harness:app worker --lease-seconds 2

Seven workflow kinds, each a function of one integer ``n`` in its payload, so the outcome
of every run is known in advance (``expected``) and comparable across databases
(``outcome``):

- ``chain``   three sequential steps;
- ``fanout``  a join of three steps, then a step on their sum;
- ``flaky``   a step that fails its FIRST execution (it records its idempotency key in the
              host table ``rel_first_try``; an execution that finds the key succeeds);
- ``sleeper`` a step, a 1 s durable sleep, a step;
- ``review``  an approval answered by a driver thread (approve when n is even, else reject);
- ``saga``    two compensatable steps, then a step failing for good: the run fails after
              compensating both, in reverse completion order;
- ``ledger``  a ``transaction=True`` step that inserts a host row keyed by its idempotency
              key into ``rel_tx_rows`` (NO unique constraint: the test counts the rows, which
              must exist exactly once), then a step.

``napper`` (three steps around two sleeps) is the workload of the database-restart test.

Step executions are logged in ``rel_exec`` ("start" before the work, "done" after it;
autocommit, outside squidmesh's transactions), so tests can show that every completed
step ran at least once and count the executions a crash repeated. Host tables
live in the ``public`` schema of the run's PostgreSQL database; on any other URL (the
in-process unit checks of this module) they are simulated in memory.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

import squidmesh as sm

URL_ENV = "SQUIDMESH_RELIABILITY_URL"
#: seconds each ordinary step sleeps (widens the window in which a SIGKILL lands mid-step)
STEP_SECONDS_ENV = "SQUIDMESH_RELIABILITY_STEP_SECONDS"

KINDS = ("chain", "fanout", "flaky", "sleeper", "review", "saga", "ledger")

HOST_DDL = (
    "CREATE TABLE IF NOT EXISTS public.rel_first_try (key text PRIMARY KEY)",
    # Deliberately no UNIQUE constraint on key: duplicates must be visible, not prevented.
    "CREATE TABLE IF NOT EXISTS public.rel_tx_rows ("
    " id bigserial PRIMARY KEY, key text NOT NULL, run_id text NOT NULL, value integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS public.rel_exec ("
    " id bigserial PRIMARY KEY, key text NOT NULL, name text NOT NULL, phase text NOT NULL,"
    " pid integer NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp())",
)

_local = threading.local()
_lock = threading.Lock()
#: the host tables when the database is not PostgreSQL (one process only)
LOCAL: dict[str, Any] = {"first_try": set(), "exec": []}


class Job(BaseModel):
    n: int


class Nap(BaseModel):
    n: int
    seconds: float = 1.5


def _libpq() -> str | None:
    url = os.environ.get(URL_ENV, "")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgres"):
        return None
    return "postgresql://" + rest


def create_host_tables(libpq_url: str) -> None:
    import psycopg

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        for ddl in HOST_DDL:
            conn.execute(ddl)


def _host_execute(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Run one autocommit statement on this thread's host connection. A connection the
    database dropped (restart test) is replaced, for up to ~15 s, so the host's own
    bookkeeping never fails a step that squidmesh itself would have carried through."""
    url = _libpq()
    assert url is not None
    import psycopg

    delay = 0.1
    for attempt in range(12):
        conn = getattr(_local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(url, autocommit=True, connect_timeout=3)
                _local.conn = conn
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
        except psycopg.OperationalError:
            if conn is not None:
                conn.close()
            _local.conn = None
            if attempt == 11:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def _pause() -> None:
    seconds = float(os.environ.get(STEP_SECONDS_ENV, "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


def _log(name: str, phase: str) -> None:
    key = sm.step_context().idempotency_key
    if _libpq() is None:
        with _lock:
            LOCAL["exec"].append((key, name, phase))
        return
    _host_execute(
        "INSERT INTO public.rel_exec (key, name, phase, pid) VALUES (%s, %s, %s, %s)",
        (key, name, phase, os.getpid()),
    )


def _pause_and_log(name: str) -> None:
    """Log the start of an execution, do the (slow) work, log its end."""
    _log(name, "start")
    _pause()
    _log(name, "done")


# --------------------------------------------------------------------------- steps


@sm.step
def add(x: int, y: int) -> int:
    _pause_and_log("add")
    return x + y


@sm.step
def mul(x: int, y: int) -> int:
    _pause_and_log("mul")
    return x * y


@sm.step(retry=sm.Retry(max_attempts=6, backoff=sm.Backoff.fixed(0.2)))
def first_try_fails(x: int) -> int:
    """Fails on its first execution: the first one to record the idempotency key."""
    _log("first_try_fails", "start")
    _pause()
    key = sm.step_context().idempotency_key
    if _libpq() is None:
        with _lock:
            first = key not in LOCAL["first_try"]
            LOCAL["first_try"].add(key)
    else:
        first = bool(
            _host_execute(
                "INSERT INTO public.rel_first_try (key) VALUES (%s) "
                "ON CONFLICT DO NOTHING RETURNING key",
                (key,),
            )
        )
    if first:
        raise RuntimeError(f"first execution of {key} fails on purpose")
    _log("first_try_fails", "done")
    return x * 10


def release(*, input: Any, output: Any, failure: Any) -> str:
    _pause()
    return f"released {output}"


def refund(*, input: Any, output: Any, failure: Any) -> str:
    _pause()
    return f"refunded {output}"


@sm.step(compensate=release)
def reserve(n: int) -> int:
    _pause_and_log("reserve")
    return n + 1000


@sm.step(compensate=refund)
def charge(n: int) -> int:
    _pause_and_log("charge")
    return n + 2000


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.fixed(0.1)))
def ship(n: int) -> int:
    _pause()
    raise sm.NonRetryable(f"cannot ship order {n}")


@sm.step(transaction=True)
def book(n: int) -> int:
    """Writes a host row in squidmesh's transaction: it exists iff the step completed."""
    import sqlalchemy as sa

    ctx = sm.step_context()
    _pause()
    if ctx.connection is not None:
        ctx.connection.execute(
            sa.text("INSERT INTO public.rel_tx_rows (key, run_id, value) VALUES (:k, :r, :v)"),
            {"k": ctx.idempotency_key, "r": ctx.run_id, "v": n},
        )
    return n * 7


# --------------------------------------------------------------------------- workflows


@sm.workflow(name="chain", triggers=[sm.manual(payload=Job)])
def chain(job: Job) -> Any:
    a = yield add(job.n, 1)
    b = yield mul(a, 2)
    c = yield add(b, 3)
    return c


@sm.workflow(name="fanout", triggers=[sm.manual(payload=Job)])
def fanout(job: Job) -> Any:
    x, y, z = yield sm.join(add(job.n, 1), mul(job.n, 3), add(job.n, 10))
    total = yield add(x + y, z)
    return total


@sm.workflow(name="flaky", triggers=[sm.manual(payload=Job)])
def flaky(job: Job) -> Any:
    a = yield add(job.n, 1)
    b = yield first_try_fails(a)
    return b


@sm.workflow(name="sleeper", triggers=[sm.manual(payload=Job)])
def sleeper(job: Job) -> Any:
    a = yield add(job.n, 1)
    yield sm.sleep(seconds=1)
    b = yield add(a, 1)
    return b


@sm.workflow(name="review", triggers=[sm.manual(payload=Job)])
def review(job: Job) -> Any:
    a = yield add(job.n, 1)
    decision = yield sm.approval("review")
    b = yield add(a, 100 if decision.approved else -100)
    return {"approved": decision.approved, "actor": decision.actor, "value": b}


@sm.workflow(name="saga", triggers=[sm.manual(payload=Job)])
def saga(job: Job) -> Any:
    yield reserve(job.n)
    yield charge(job.n)
    yield ship(job.n)
    return "shipped"


@sm.workflow(name="ledger", triggers=[sm.manual(payload=Job)])
def ledger(job: Job) -> Any:
    booked = yield book(job.n)
    after = yield add(booked, 1)
    return after


@sm.workflow(name="napper", triggers=[sm.manual(payload=Nap)])
def napper(nap: Nap) -> Any:
    a = yield add(nap.n, 1)
    yield sm.sleep(seconds=nap.seconds)
    b = yield add(a, 1)
    yield sm.sleep(seconds=nap.seconds)
    c = yield add(b, 1)
    return c


WORKFLOWS = [chain, fanout, flaky, sleeper, review, saga, ledger, napper]


def build_mesh(url: str, **kwargs: Any) -> sm.Mesh:
    return sm.Mesh(url, workflows=WORKFLOWS, **kwargs)


def app() -> sm.Mesh:
    """The worker processes' Mesh (``--app tests.reliability.harness:app``)."""
    return build_mesh(os.environ.get(URL_ENV) or "memory://")


# --------------------------------------------------------------------------- the oracle


def approves(n: int) -> bool:
    """The driver's decision for ``review`` run ``n``."""
    return n % 2 == 0


DRIVER = "driver"


def expected(kind: str, n: int) -> dict[str, Any]:
    """The outcome (as ``outcome`` reports it) run ``kind``/``n`` must reach, computed from
    the workload's definition alone."""

    def step(seq: int, name: str, output: Any, parent: int | None = None) -> tuple[Any, ...]:
        return (seq, "step", name, "completed", output, parent, None)

    if kind == "chain":
        a = n + 1
        b = a * 2
        c = b + 3
        steps = [step(0, "add", a), step(1, "mul", b), step(2, "add", c)]
        return _done(c, steps)
    if kind == "fanout":
        x, y, z = n + 1, n * 3, n + 10
        steps = [
            (0, "join", "join", "completed", None, None, None),
            step(1, "add", x, 0),
            step(2, "mul", y, 0),
            step(3, "add", z, 0),
            step(4, "add", x + y + z),
        ]
        return _done(x + y + z, steps)
    if kind == "flaky":
        a = n + 1
        return _done(a * 10, [step(0, "add", a), step(1, "first_try_fails", a * 10)])
    if kind == "sleeper":
        a = n + 1
        steps = [step(0, "add", a), (1, "sleep", "sleep", "completed", None, None, None)]
        return _done(a + 1, [*steps, step(2, "add", a + 1)])
    if kind == "review":
        a = n + 1
        ok = approves(n)
        b = a + (100 if ok else -100)
        decision = {"approved": ok, "actor": DRIVER}
        steps = [
            step(0, "add", a),
            (1, "approval", "review", "completed", decision, None, None),
            step(2, "add", b),
        ]
        return _done({"approved": ok, "actor": DRIVER, "value": b}, steps)
    if kind == "saga":
        message = f"cannot ship order {n}"
        steps = [
            (
                0,
                "step",
                "reserve",
                "completed",
                n + 1000,
                None,
                ("completed", f"released {n + 1000}"),
            ),
            (
                1,
                "step",
                "charge",
                "completed",
                n + 2000,
                None,
                ("completed", f"refunded {n + 2000}"),
            ),
            (2, "step", "ship", "failed", None, None, None),
        ]
        return {
            "status": "failed",
            "result": None,
            "error": ("squidmesh.errors.NonRetryable", message),
            "steps": steps,
            "compensated": ["charge", "reserve"],
        }
    if kind == "ledger":
        booked = n * 7
        return _done(booked + 1, [step(0, "book", booked), step(1, "add", booked + 1)])
    if kind == "napper":
        a = n + 1
        nap = (1, "sleep", "sleep", "completed", None, None, None)
        steps = [step(0, "add", a), nap, step(2, "add", a + 1)]
        steps += [(3, "sleep", "sleep", "completed", None, None, None), step(4, "add", a + 2)]
        return _done(a + 2, steps)
    raise ValueError(f"unknown workload kind {kind!r}")


def _done(result: Any, steps: list[tuple[Any, ...]]) -> dict[str, Any]:
    return {
        "status": "completed",
        "result": result,
        "error": None,
        "steps": steps,
        "compensated": [],
    }


def outcome(run: Any) -> dict[str, Any]:
    """What must not depend on crashes: a run's status, result, error, each history entry's
    outcome (timestamps and attempt counts left out: crashes legitimately add attempts) and
    the order compensations ran in (audit ``compensated`` events)."""
    steps = []
    for s in run.step_runs or ():
        output = s.output
        if s.kind == "approval" and isinstance(output, dict):
            output = {"approved": output.get("approved"), "actor": output.get("actor")}
        comp = None
        if s.compensation is not None:
            comp = (s.compensation.get("status"), s.compensation.get("output"))
        steps.append((s.seq, s.kind, s.name, str(s.status), output, s.parent, comp))
    error = None
    if run.status == "failed" and run.error is not None:
        error = (run.error.get("type"), run.error.get("message"))
    compensated = [e.step for e in run.audit_events or () if e.type == "compensated"]
    return {
        "status": str(run.status.value if hasattr(run.status, "value") else run.status),
        "result": run.result,
        "error": error,
        "steps": steps,
        "compensated": compensated,
    }


def plan(count: int) -> list[tuple[str, int]]:
    """``count`` (kind, n) pairs, the kinds interleaved."""
    return [(KINDS[i % len(KINDS)], i) for i in range(count)]


def answer_approvals(meshes: Iterable[sm.Mesh]) -> int:
    """Approve or reject every ``review`` run waiting at its approval; returns how many."""
    answered = 0
    for mesh in meshes:
        for run in mesh.list_runs(status="paused", workflow="review", limit=500):
            n = int(run.payload["n"])
            try:
                if approves(n):
                    mesh.approve_run(run.id, actor=DRIVER)
                else:
                    mesh.reject_run(run.id, actor=DRIVER)
                answered += 1
            except sm.InvalidTransitionError:
                pass  # seen paused a moment ago, moved on since (cannot happen twice)
    return answered
