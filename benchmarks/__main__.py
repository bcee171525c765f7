"""``python -m benchmarks``: run SPEC section 10's benchmarks, print a table, write JSON.

Every benchmark runs in its own freshly created ``sqm_bench_*`` database on the server
named by ``--database-url``; every database this run created is dropped at the end, also
after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import CpuWindow, Databases, Measure, machine_info

__all__ = ["main"]

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
ALL = ("baseline", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "ASYNC")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="squidmesh benchmarks (SPEC section 10)"
    )
    parser.add_argument("--quick", action="store_true", help="small smoke sizes (under a minute)")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated subset of baseline,B1,B2,B3,B4,B5,B6,B7,B8,ASYNC "
        "(B1 and B2 imply baseline)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("SQUIDMESH_BENCH_DATABASE_URL", DEFAULT_SERVER),
        help="PostgreSQL server to create the benchmark databases on (any database on it)",
    )
    prof = parser.add_mutually_exclusive_group()
    prof.add_argument(
        "--profile", action="store_true", help="always profile the B1 hot path afterwards"
    )
    prof.add_argument(
        "--no-profile", action="store_true", help="never profile (default: when B1/B2 miss)"
    )
    args = parser.parse_args(argv)
    if args.only:
        wanted = {part.strip().upper() for part in args.only.split(",") if part.strip()}
        unknown = wanted - {name.upper() for name in ALL}
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; use {','.join(ALL)}")
        args.selected = [name for name in ALL if name.upper() in wanted]
    else:
        args.selected = list(ALL)
    if {"B1", "B2"} & set(args.selected) and "baseline" not in args.selected:
        args.selected.insert(0, "baseline")
    return args


def _table(measures: list[Measure], *, markdown: bool = False) -> str:
    header = ("benchmark", "measured", "target", "ratio", "verdict")
    rows = [(m.bench, f"{m.label}: {m.measured}", m.target, m.ratio, m.verdict) for m in measures]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
        return "\n".join(lines)
    widths = (9, 64, 24, 30, 7)
    out = []

    def emit(cells: tuple[str, ...]) -> None:
        wrapped = [textwrap.wrap(c, w) or [""] for c, w in zip(cells, widths, strict=True)]
        for i in range(max(len(w) for w in wrapped)):
            out.append(
                "  ".join(
                    (w[i] if i < len(w) else "").ljust(width)
                    for w, width in zip(wrapped, widths, strict=True)
                ).rstrip()
            )

    emit(header)
    out.append("  ".join("-" * w for w in widths))
    for row in rows:
        emit(row)
    return "\n".join(out)


def _background_busy() -> float | None:
    """How many cores the rest of the machine keeps busy while we idle (1 s sample)."""
    with CpuWindow() as cpu:
        time.sleep(1.0)
    return None if cpu.others is None else round(cpu.others + cpu.client, 2)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    dbs = Databases(args.database_url)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "selected": args.selected,
        "machine": machine_info(dbs.server_url),
        "load_average_at_start": list(os.getloadavg()),
        "background_busy_cores": _background_busy(),
        "benchmarks": {},
    }
    measures: list[Measure] = []
    baseline_rates: list[float] | None = None
    quick = bool(args.quick)

    def attempt(name: str, fn: Callable[[], tuple[Measure, dict[str, Any]]]) -> None:
        print(f"... {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            measure, data = fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            trace = traceback.format_exc()
            print(trace, file=sys.stderr)
            measure = Measure(name, "failed", f"{type(exc).__name__}: {exc}"[:200], verdict="error")
            data = {"error": f"{type(exc).__name__}: {exc}", "traceback": trace}
        data = dict(data)
        data["benchmark_seconds"] = round(time.perf_counter() - t0, 1)
        report["benchmarks"][name] = data
        measures.append(measure)

    interrupted = False
    try:
        if "baseline" in args.selected:
            from benchmarks import baseline

            def run_baseline() -> tuple[Measure, dict[str, Any]]:
                nonlocal baseline_rates
                measure, data = baseline.run(dbs, quick=quick)
                baseline_rates = [float(r) for r in data["runs_per_s"]]
                return measure, data

            attempt("baseline", run_baseline)
        if "B1" in args.selected:
            from benchmarks import b1_sequential

            if baseline_rates is None:
                measures.append(Measure("B1", "skipped", "no baseline", verdict="error"))
            else:
                rates = baseline_rates
                attempt("B1", lambda: b1_sequential.run(dbs, quick=quick, baseline=rates))
        if "B2" in args.selected:
            from benchmarks import b2_throughput

            attempt("B2", lambda: b2_throughput.run(dbs, quick=quick, baseline=baseline_rates))
        if "B3" in args.selected:
            from benchmarks import b3_replay

            attempt("B3", lambda: b3_replay.run(dbs, quick=quick))
        if "B4" in args.selected:
            from benchmarks import b4_latency

            attempt("B4", lambda: b4_latency.run(dbs, quick=quick))
        if "B5" in args.selected:
            from benchmarks import b5_scale

            attempt("B5", lambda: b5_scale.run(dbs, quick=quick))
        if "B6" in args.selected:
            from benchmarks import b6_embedded

            attempt("B6", lambda: b6_embedded.run(quick=quick))
        if "B8" in args.selected:
            from benchmarks import b8_footprint

            attempt("B8", lambda: b8_footprint.run(dbs, quick=quick))
        if "ASYNC" in args.selected:
            from benchmarks import async_lag

            attempt("ASYNC", lambda: async_lag.run(dbs, quick=quick))
        if "B7" in args.selected:
            # Last: importing it declares a queue, which turns on the queue-aware claim in
            # this process for every benchmark after it.
            from benchmarks import b7_flow

            attempt("B7", lambda: b7_flow.run(dbs, quick=quick))
        missed = {m.bench for m in measures if m.verdict == "MISSED"}
        if args.profile or (not args.no_profile and not quick and missed & {"B1", "B2"}):
            from benchmarks import profiling

            print("... profile (B1 hot path)", file=sys.stderr, flush=True)
            try:
                report["profile"] = profiling.run(dbs, steps=300 if quick else 1000)
            except Exception as exc:
                report["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
                print(traceback.format_exc(), file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: dropping the benchmark databases", file=sys.stderr)
    finally:
        leftover = dbs.drop_all()
        if leftover:
            print(f"WARNING: could not drop {', '.join(leftover)}", file=sys.stderr)
        report["databases_not_dropped"] = leftover

    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = list(os.getloadavg())
    report["table"] = [dataclasses.asdict(m) | {"data": None} for m in measures]
    for row in report["table"]:
        row.pop("data")
    print()
    print(_table(measures))
    _print_profile(report.get("profile"))
    busy = report["background_busy_cores"]
    if busy is not None and busy > 0.3:
        print(
            f"\nWARNING: the machine was busy before the run ({busy:.2f} cores in use by other "
            "processes): absolute numbers and ratios are unreliable; rerun when it is idle"
        )
    print(f"\ntotal {report['total_seconds']:.0f} s ({report['mode']})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.json.with_suffix(".md").write_text(_table(measures, markdown=True) + "\n")
    print(f"wrote {args.json} and {args.json.with_suffix('.md').name}")
    if interrupted:
        return 130
    return 1 if any(m.verdict == "error" for m in measures) else 0


def _print_profile(profile: dict[str, Any] | None) -> None:
    if not profile or "error" in profile:
        return
    sqlp = profile["sql_per_step"]
    print(
        f"\nprofile (B1 hot path, {profile['steps']} steps, cProfile on the job thread): "
        f"{profile['wall_ms_per_step']:.2f} ms/step wall = "
        f"{profile['db_wait_ms_per_step']:.2f} ms waiting on PostgreSQL + "
        f"{profile['python_ms_per_step']:.2f} ms Python (profiled); "
        f"{sqlp['statements']:.2f} statements, ~{sqlp['round_trips']:.2f} round trips per step"
    )
    for fn in profile.get("server_functions", [])[:3]:
        print(f"  server: {fn['function']} {fn['ms_per_call']:.3f} ms/call ({fn['calls']} calls)")
    buckets = profile["tottime_ms_per_step_by_package"]
    print("  Python by package (ms/step): " + ", ".join(f"{k} {v:.2f}" for k, v in buckets.items()))


if __name__ == "__main__":
    raise SystemExit(main())
