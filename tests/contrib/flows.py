"""The workflow the broker-executor tests run, importable by the test process and by
the broker workers (``celery_app``, ``procrastinate_app``) alike."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel

import squidmesh as sm


class Parcel(BaseModel):
    item: str


@sm.step
def pack(item: str) -> str:
    return f"packed {item}"


@sm.step(retry=sm.Retry(max_attempts=3, backoff=sm.Backoff.fixed(1)))
def charge(item: str) -> str:
    attempt = sm.step_context().attempt
    if attempt == 1:
        raise RuntimeError("the card network hiccuped")
    return f"charged {item} on attempt {attempt}"


@sm.step
def ship(item: str) -> dict[str, Any]:
    return {"shipped": item, "pid": os.getpid()}


@sm.workflow(triggers=[sm.manual("send", payload=Parcel)])
def parcel(payload: Parcel):
    packed = yield pack(payload.item)
    yield sm.sleep(seconds=1)
    charged = yield charge(payload.item)
    shipped = yield ship(payload.item)
    return {"packed": packed, "charged": charged, **shipped}


class Linger(BaseModel):
    seconds: float


LINGER_DDL = (
    "CREATE TABLE IF NOT EXISTS public.linger_log (run_id text NOT NULL, "
    "attempt integer NOT NULL, pid integer NOT NULL, phase text NOT NULL, "
    "at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


def _linger_log(phase: str) -> None:
    import psycopg

    ctx = sm.step_context()
    with psycopg.connect(os.environ["SQUIDMESH_TEST_CONTRIB_DATABASE"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.linger_log (run_id, attempt, pid, phase) VALUES (%s, %s, %s, %s)",
            (ctx.run_id, ctx.attempt, os.getpid(), phase),
        )


@sm.step
def linger(seconds: float) -> int:
    """A slow step whose executions are logged (by which process, which attempt)."""
    _linger_log("start")
    time.sleep(seconds)
    _linger_log("done")
    return os.getpid()


@sm.workflow(triggers=[sm.manual("linger", payload=Linger)])
def lingering(payload: Linger) -> Any:
    return (yield from linger(payload.seconds))
