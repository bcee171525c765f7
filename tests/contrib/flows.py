"""The workflow the broker-executor tests run, importable by the test process and by
the broker workers (``celery_app``, ``procrastinate_app``) alike."""

from __future__ import annotations

import os
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
