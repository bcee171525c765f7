from __future__ import annotations

# The application the worker tests run, in real ``squidmesh worker`` processes:
#
#     SQUIDMESH_TEST_URL=postgresql+psycopg://... \
#         squidmesh --app tests.worker.apps:mesh worker --concurrency 4
#
# Steps record every execution (a "start" row before the work, a "done" row after it) in
# the host table ``step_log`` through their own autocommit connection, outside squidmesh's
# transactions, so a test can count executions across processes. On a non-PostgreSQL URL
# the records go to ``LOCAL_LOG`` (single-process tests).
import os
import threading
import time
from typing import Any

from pydantic import BaseModel

import squidmesh as sm

URL_ENV = "SQUIDMESH_TEST_URL"

LOG_DDL = """
CREATE TABLE IF NOT EXISTS public.step_log (
    id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    seq integer NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    name text NOT NULL,
    phase text NOT NULL,
    note text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

#: records of executions when the database is not PostgreSQL (one process only)
LOCAL_LOG: list[dict[str, Any]] = []
#: steps of ``flaky`` fail this many attempts before succeeding
FLAKY_FAILURES = 2

_local = threading.local()
_connections: list[Any] = []
_lock = threading.Lock()


def _libpq(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgres"):
        return None
    return "postgresql://" + rest


def create_log_table(libpq_url: str) -> None:
    import psycopg

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(LOG_DDL)


def _connection(libpq_url: str) -> Any:
    import psycopg

    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or getattr(_local, "url", None) != libpq_url:
        conn = psycopg.connect(libpq_url, autocommit=True)
        _local.conn, _local.url = conn, libpq_url
        with _lock:
            _connections.append(conn)
    return conn


def close_connections() -> None:
    """Close the log connections this process opened (tests call it at teardown)."""
    with _lock:
        conns, _connections[:] = list(_connections), []
    for conn in conns:
        conn.close()


def record(name: str, phase: str, note: str | None = None) -> None:
    ctx = sm.step_context()
    row = {
        "run_id": ctx.run_id,
        "seq": ctx.seq,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "name": name,
        "phase": phase,
        "note": note,
    }
    libpq_url = _libpq(os.environ.get(URL_ENV, ""))
    if libpq_url is None:
        with _lock:
            LOCAL_LOG.append(row)
        return
    _connection(libpq_url).execute(
        "INSERT INTO public.step_log (run_id, seq, attempt, pid, name, phase, note) "
        "VALUES (%(run_id)s, %(seq)s, %(attempt)s, %(pid)s, %(name)s, %(phase)s, %(note)s)",
        row,
    )


# --------------------------------------------------------------------------- sequential


@sm.step
def seq_step(name: str, x: int) -> int:
    record(name, "start")
    record(name, "done")
    return x + 1


@sm.workflow(name="sequential")
def sequential(payload: Any) -> Any:
    a = yield seq_step("one", 0)
    b = yield seq_step("two", a)
    c = yield seq_step("three", b)
    return c


# --------------------------------------------------------------------------- join


@sm.workflow(name="joined")
def joined(payload: Any) -> Any:
    left, right = yield sm.join(seq_step("left", 0), seq_step("right", 10))
    total = yield seq_step("total", left + right)
    return total


# --------------------------------------------------------------------------- slow


class SlowInput(BaseModel):
    seconds: float = 2.0


@sm.step
def slow_step(seconds: float) -> str:
    record("slow", "start")
    time.sleep(seconds)
    record("slow", "done")
    return "slept"


class HogInput(BaseModel):
    exponent: int = 20_000_000


@sm.step
def gil_hog(exponent: int) -> int:
    """Holds the GIL for seconds: CPython computes a big power in C without releasing it,
    so no other thread of the process runs (its lease heartbeat included)."""
    record("hog", "start")
    digits: int = pow(3, exponent).bit_length()
    record("hog", "done")
    return digits


@sm.workflow(name="hogging", triggers=[sm.manual(payload=HogInput)])
def hogging(payload: HogInput) -> Any:
    return (yield gil_hog(payload.exponent))


@sm.workflow(name="slow", triggers=[sm.manual(payload=SlowInput)])
def slow(payload: SlowInput) -> Any:
    first = yield slow_step(payload.seconds)
    after = yield seq_step("after", 0)
    return {"slow": first, "after": after}


# --------------------------------------------------------------------------- sleeping


@sm.workflow(name="sleepy")
def sleepy(payload: Any) -> Any:
    before = yield seq_step("before_sleep", 0)
    yield sm.sleep(seconds=1)
    after = yield seq_step("after_sleep", before)
    return after


# --------------------------------------------------------------------------- retries


@sm.step(retry=sm.Retry(max_attempts=FLAKY_FAILURES + 1, backoff=sm.Backoff.fixed(0.2)))
def flaky_step(x: int) -> int:
    record("flaky", "start")
    if sm.step_context().attempt <= FLAKY_FAILURES:
        raise RuntimeError(f"flaky attempt {sm.step_context().attempt}")
    record("flaky", "done")
    return x * 2


@sm.workflow(name="flaky")
def flaky(payload: Any) -> Any:
    a = yield seq_step("pre", 1)
    yield sm.sleep(seconds=0.5)
    b = yield flaky_step(a)
    return b


# --------------------------------------------------------------------------- cron


@sm.step
def tick_step(fire_time: str) -> str:
    record("tick", "start", note=fire_time)
    record("tick", "done", note=fire_time)
    return fire_time


@sm.workflow(
    name="ticker",
    triggers=[sm.cron("* * * * * *", name="every_second", catchup="all")],
)
def ticker(payload: Any) -> Any:
    schedule = sm.current_run().schedule
    assert schedule is not None
    yield tick_step(schedule["fire_time"])
    return schedule


# --------------------------------------------------------------------------- children


class FanItem(BaseModel):
    n: int


@sm.step
def square(n: int) -> int:
    record("square", "start", note=str(n))
    record("square", "done", note=str(n))
    return n * n


@sm.workflow(name="fan_child", triggers=[sm.manual(payload=FanItem)])
def fan_child(item: FanItem) -> Any:
    return (yield square(item.n))


class Fan(BaseModel):
    count: int = 40
    limit: int = 5


@sm.workflow(name="fan_parent", triggers=[sm.manual(payload=Fan)])
def fan_parent(fan: Fan) -> Any:
    squares = yield sm.join(
        *[sm.child(fan_child, {"n": n}) for n in range(fan.count)], limit=fan.limit
    )
    total = yield seq_step("total", sum(squares) - 1)
    return total


# --------------------------------------------------------------------------- flow control

#: at most 3 attempts of ``gated_step`` at once across every worker, 2 per key
GATED = sm.Queue("gated", concurrency=3, key_concurrency=2)
#: at most 5 attempts of ``rated_step`` start per second across every worker
RATED = sm.Queue("rated", rate=sm.Rate(5, per=1))


@sm.step(queue=GATED, key=lambda key, seconds: key)
def gated_step(key: str, seconds: float) -> str:
    record("gated", "start", note=key)
    time.sleep(seconds)
    record("gated", "done", note=key)
    return key


class GatedInput(BaseModel):
    #: how many calls of each key: {"flood": 30, "few": 3}
    keys: dict[str, int]
    seconds: float = 0.1


@sm.workflow(name="gated", triggers=[sm.manual(payload=GatedInput)])
def gated(payload: GatedInput) -> Any:
    calls = [gated_step(key, payload.seconds) for key, n in payload.keys.items() for _ in range(n)]
    done = yield sm.join(*calls)
    return len(done)


@sm.step(queue=RATED)
def rated_step(n: int) -> int:
    record("rated", "start", note=str(n))
    record("rated", "done", note=str(n))
    return n


class RatedInput(BaseModel):
    count: int = 20


@sm.workflow(name="rated", triggers=[sm.manual(payload=RatedInput)])
def rated(payload: RatedInput) -> Any:
    done = yield sm.join(*[rated_step(n) for n in range(payload.count)])
    return len(done)


#: at most 2 runs of ``admitted`` active at once across every worker
RUN_SLOTS = sm.Queue("run-slots", concurrency=2)


@sm.step
def admitted_work(seconds: float) -> str:
    record("admitted", "start")
    time.sleep(seconds)
    record("admitted", "done")
    return "done"


@sm.workflow(name="admitted", triggers=[sm.manual(payload=SlowInput)], queue=RUN_SLOTS)
def admitted(payload: SlowInput) -> Any:
    first = yield admitted_work(payload.seconds)
    second = yield admitted_work(payload.seconds)
    return [first, second]


WORKFLOWS = [
    admitted,
    sequential,
    joined,
    slow,
    hogging,
    sleepy,
    flaky,
    ticker,
    fan_parent,
    fan_child,
    gated,
    rated,
]

mesh = sm.Mesh(os.environ.get(URL_ENV) or "memory://", workflows=WORKFLOWS)
