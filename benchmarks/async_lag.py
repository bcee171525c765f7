"""ASYNC: the event loop's lag while 100 ``_async`` twins run at once (SPEC section 17).

A ticker coroutine asks to wake every 1 ms and records how late each wake-up is (the
loop's lag: what every other coroutine of the host, an HTTP request, a websocket, waits
on top of its own work). Measured on one PostgreSQL database, in three phases:

- **idle**: the ticker alone, for the same duration as the async phase (the floor).
- **async**: 100 concurrent callers, each doing ``start_run_async`` then
  ``inspect_run_async`` then ``explain_run_async`` then ``list_runs_async`` (400 calls),
  through the Mesh's pool (``async_threads`` = 4, the default). Reported: lag p50, p99
  and max, and the calls' wall time and rate.
- **blocking**: the same 400 calls made with the sync methods *inside* coroutines (what
  an ``async def`` endpoint calling ``mesh.start_run`` does), for contrast: the loop is
  frozen for each call, so the lag is the length of the calls.

No worker runs: the calls are the API's, not step execution.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks import flows
from benchmarks.common import Databases, Measure, median, percentile
from benchmarks.harness import open_mesh

__all__ = ["run"]

CALLERS = 100
TICK = 0.001
#: the async phase's p99 lag must stay under this (a 100 Hz frame)
TARGET_P99_MS = 10.0


async def _ticker(stop: asyncio.Event, lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + TICK
        await asyncio.sleep(TICK)
        lags.append(max(0.0, loop.time() - due))


async def _phase(mesh: Any, mode: str, idle_seconds: float = 1.0) -> dict[str, Any]:
    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(stop, lags))
    await asyncio.sleep(0.05)  # the ticker is running
    lags.clear()

    async def caller(i: int) -> None:
        if mode == "async":
            run = await mesh.start_run_async(flows.approval_flow, {})
            await mesh.inspect_run_async(run.id)
            await mesh.explain_run_async(run.id)
            await mesh.list_runs_async(limit=10)
        else:
            # An ``async def`` endpoint calling the sync API: no await between calls.
            run = mesh.start_run(flows.approval_flow, {})
            mesh.inspect_run(run.id)
            mesh.explain_run(run.id)
            mesh.list_runs(limit=10)

    t0 = time.perf_counter()
    if mode == "idle":
        await asyncio.sleep(idle_seconds)
    else:
        await asyncio.gather(*(caller(i) for i in range(CALLERS)))
    elapsed = time.perf_counter() - t0
    stop.set()
    await ticker
    ms = [1000 * lag for lag in lags] or [0.0]
    calls = 0 if mode == "idle" else 4 * CALLERS
    return {
        "seconds": round(elapsed, 3),
        "calls": calls,
        "calls_per_s": round(calls / elapsed, 1) if calls else None,
        "ticks": len(lags),
        "lag_p50_ms": round(percentile(ms, 50), 3),
        "lag_p99_ms": round(percentile(ms, 99), 3),
        "lag_max_ms": round(max(ms), 3),
        "lag_median_ms": round(median(ms), 3),
    }


def run(dbs: Databases, *, quick: bool) -> tuple[Measure, dict[str, Any]]:
    data: dict[str, Any] = {"callers": CALLERS, "calls_per_caller": 4, "tick_ms": 1000 * TICK}
    with dbs.fresh("async") as url, open_mesh(url) as mesh:
        data["async_threads"] = mesh._async.threads

        async def measure() -> None:
            # Warm-up: connections, the pool's threads, statement caches.
            await asyncio.gather(*(mesh.list_runs_async(limit=1) for _ in range(16)))
            data["async"] = await _phase(mesh, "async")
            data["idle"] = await _phase(mesh, "idle", data["async"]["seconds"])
            if not quick:
                data["blocking"] = await _phase(mesh, "blocking")

        asyncio.run(measure())
    a, idle = data["async"], data["idle"]
    measured = (
        f"{CALLERS} concurrent callers, {a['calls']} calls in {a['seconds']:.2f} s "
        f"({a['calls_per_s']:.0f}/s, pool of {data['async_threads']}): loop lag p50 "
        f"{a['lag_p50_ms']:.2f} / p99 {a['lag_p99_ms']:.2f} / max {a['lag_max_ms']:.2f} ms "
        f"(idle loop p99 {idle['lag_p99_ms']:.2f} ms)"
    )
    if "blocking" in data:
        b = data["blocking"]
        measured += f"; sync calls in coroutines: lag max {b['lag_max_ms']:.1f} ms"
    verdict = "met" if a["lag_p99_ms"] < TARGET_P99_MS else "MISSED"
    return (
        Measure(
            "ASYNC",
            "event loop lag",
            measured,
            target=f"p99 < {TARGET_P99_MS:g} ms",
            verdict=verdict,
            ratio=f"p99 {a['lag_p99_ms']:.2f} ms",
            data=data,
        ),
        data,
    )
