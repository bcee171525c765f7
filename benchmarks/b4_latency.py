"""B4 latency: ``start_run`` -> first step start, ``approve_run`` -> next step start.

Two Mesh objects on one database: the worker's (``mesh.worker(poll_interval=30)``) and a
client's, which calls ``start_run`` / ``approve_run``. They share no in-process nudge, so
only PostgreSQL ``LISTEN/NOTIFY`` can wake the idle worker within the 30 s poll
interval, as with an API process and a worker process. Steps record ``perf_counter`` when
they start (same process, same clock). The worker is left idle (50 ms) before each call.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from benchmarks import flows
from benchmarks.common import Databases, Measure, median, percentile, wait_for
from benchmarks.harness import Completion, open_mesh

__all__ = ["run"]

IDLE = 0.05
POLL_INTERVAL = 30.0


#: SPEC section 10: start_run / approve_run to the next step's start, idle worker
P50_MS = 5.0
P99_MS = 20.0


def _paused(mesh: Any, run_id: str) -> bool:
    return bool(mesh.inspect_run(run_id).status == "paused")


def _summary(values: list[float]) -> dict[str, float]:
    ms = [1000 * v for v in values]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(sum(ms) / len(ms), 2),
        "median_ms": round(median(ms), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def run(dbs: Databases, *, quick: bool) -> tuple[Measure, dict[str, Any]]:
    samples = 10 if quick else 50
    starts: list[float] = []
    approves: list[float] = []
    with (
        dbs.fresh("b4") as url,
        open_mesh(url) as worker_mesh,
        open_mesh(url) as client,
        Completion(url) as done,
    ):
        worker = worker_mesh.worker(poll_interval=POLL_INTERVAL)
        time.sleep(0.5)  # LISTEN established
        flows.PROBE.reset()
        for i in range(samples + 1):  # the first sample is a warm-up
            time.sleep(IDLE)
            t0 = time.perf_counter()
            run_id = str(client.start_run(flows.approval_flow, {}).id)
            first = flows.PROBE.wait_mark(run_id, "first", 10 * POLL_INTERVAL)
            if first is None:
                raise TimeoutError("B4: the first step never started")
            if not wait_for(functools.partial(_paused, client, run_id), 30, 0.002):
                raise TimeoutError(f"B4: run {run_id} did not pause at its approval")
            time.sleep(IDLE)
            t1 = time.perf_counter()
            client.approve_run(run_id, actor="bench")
            after = flows.PROBE.wait_mark(run_id, "after", 10 * POLL_INTERVAL)
            if after is None:
                raise TimeoutError("B4: the step after the approval never started")
            done.wait(i + 1, 30)
            if i > 0:
                starts.append(first - t0)
                approves.append(after - t1)
        performed = worker.performed
    data: dict[str, Any] = {
        "samples": samples,
        "poll_interval_s": POLL_INTERVAL,
        "wake": "LISTEN/NOTIFY (separate client Mesh)",
        "start_to_first_step": _summary(starts),
        "approve_to_next_step": _summary(approves),
        "jobs_performed": performed,
        "raw_start_ms": [round(1000 * v, 3) for v in starts],
        "raw_approve_ms": [round(1000 * v, 3) for v in approves],
    }
    s, a = data["start_to_first_step"], data["approve_to_next_step"]
    measured = (
        f"start->step p50 {s['p50_ms']:.1f} / p99 {s['p99_ms']:.1f} ms; "
        f"approve->step p50 {a['p50_ms']:.1f} / p99 {a['p99_ms']:.1f} ms"
    )
    # Every wake-up came from NOTIFY if no sample came near the 30 s poll interval.
    notify_only = max(s["max_ms"], a["max_ms"]) < 1000 * POLL_INTERVAL / 2
    within = all(x["p50_ms"] < P50_MS and x["p99_ms"] < P99_MS for x in (s, a))
    return (
        Measure(
            "B4",
            f"latency, idle worker (poll {POLL_INTERVAL:.0f} s), {samples} samples",
            measured,
            target=f"p50 < {P50_MS:g} ms, p99 < {P99_MS:g} ms (woken by NOTIFY)",
            ratio="NOTIFY wake-ups" if notify_only else "some waited for the poll",
            verdict="met" if notify_only and within else "MISSED",
            data=data,
        ),
        data,
    )
