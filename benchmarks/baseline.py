"""Baseline: the physical limit of one durable write per step on this server.

A single psycopg connection does ``INSERT`` + ``COMMIT`` ``n`` times (the default,
non-autocommit mode: BEGIN, INSERT, COMMIT; one WAL flush each), plus the autocommit
variant (one round trip each) for reference.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from benchmarks.common import CpuWindow, Databases, Measure

__all__ = ["commit_rate", "run"]


def commit_rate(url: str, n: int, *, autocommit: bool) -> tuple[float, dict[str, Any]]:
    with psycopg.connect(url, autocommit=autocommit) as conn:
        table = "bench_commit_ac" if autocommit else "bench_commit"
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v text NOT NULL)")
        if not autocommit:
            conn.commit()
        for _ in range(20):  # warm up: connection, plan cache, WAL
            conn.execute(f"INSERT INTO {table} (v) VALUES (%s)", ("warm",))
            if not autocommit:
                conn.commit()
        with CpuWindow(url) as cpu:
            started = time.perf_counter()
            for i in range(n):
                conn.execute(f"INSERT INTO {table} (v) VALUES (%s)", (str(i),))
                if not autocommit:
                    conn.commit()
            elapsed = time.perf_counter() - started
    return n / elapsed, cpu.per(n, elapsed)


def run(dbs: Databases, *, quick: bool) -> tuple[Measure, dict[str, Any]]:
    n = 300 if quick else 500
    with dbs.fresh("baseline") as url:
        runs = [commit_rate(url, n, autocommit=False) for _ in range(2 if quick else 5)]
        auto, _ = commit_rate(url, n, autocommit=True)
    runs.sort(key=lambda r: r[0])
    rate, cpu = runs[-1]  # the best sample: interference only slows commits down
    rates = [r for r, _ in runs]
    data = {
        "commits_per_sample": n,
        "rate_per_s": round(rate, 1),
        "median_rate_per_s": round(rates[len(rates) // 2], 1),
        "runs_per_s": [round(r, 1) for r in rates],
        "ms_per_commit": round(1000 / rate, 3),
        "autocommit_rate_per_s": round(auto, 1),
        "cpu_per_commit": cpu,
    }
    measure = Measure(
        "baseline",
        f"psycopg INSERT+COMMIT, 1 conn (best of {len(runs)} x {n})",
        f"{rate:,.0f} commits/s ({1000 / rate:.2f} ms; median {data['median_rate_per_s']:,.0f}/s)",
        data=data,
    )
    measure.ratio = f"autocommit {auto:,.0f}/s"
    return measure, data
