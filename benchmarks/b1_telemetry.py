"""B1 with and without telemetry: what lifecycle events, log lines and OpenTelemetry cost.

    python -m benchmarks.b1_telemetry [--steps 1000] [--rounds 3] [--database-url URL]

The B1 workload (one workflow of ``--steps`` trivial steps through ``mesh.worker(
concurrency=1)``, timed from ``start_run`` to ``completed``, see b1_sequential.py) in
three variants, each on a fresh database, interleaved round by round so that drift of a
shared machine hits them alike:

- ``off``: ``Mesh(telemetry=False)``;
- ``no SDK``: the default ``Mesh()`` with ``opentelemetry-api`` installed and no SDK
  configured (what a host that does not use OpenTelemetry runs);
- ``SDK``: an OpenTelemetry SDK configured: a ``TracerProvider`` whose
  ``BatchSpanProcessor`` hands every span to an exporter that drops it, and a
  ``MeterProvider`` with an in-memory reader (collected once, at the end). Every span and
  measurement is made; nothing leaves the process.

OpenTelemetry lets a process set its providers once, so between variants the global
providers are reset the way OpenTelemetry's own test utilities do it. Logging stays
unconfigured (WARNING), as in B1: the lifecycle lines are checked, not formatted.
Prints one line per run and the best of each variant against ``off``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.__main__ import DEFAULT_SERVER
from benchmarks.b1_sequential import run_once
from benchmarks.common import Databases, median


def _reset() -> None:
    from opentelemetry import trace
    from opentelemetry.metrics import _internal as metrics_internal
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace._PROXY_TRACER_PROVIDER = trace.ProxyTracerProvider()
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None
    metrics_internal._PROXY_METER_PROVIDER = metrics_internal._ProxyMeterProvider()


class _Counted:
    def __init__(self) -> None:
        self.spans = 0
        self.tracer_provider: Any = None
        self.meter_provider: Any = None
        self.reader: Any = None


def _install_sdk() -> _Counted:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    counted = _Counted()

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            counted.spans += len(spans)
            return SpanExportResult.SUCCESS

    _reset()
    counted.tracer_provider = TracerProvider()
    counted.tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    counted.reader = InMemoryMetricReader()
    counted.meter_provider = MeterProvider(metric_readers=[counted.reader])
    trace.set_tracer_provider(counted.tracer_provider)
    metrics.set_meter_provider(counted.meter_provider)
    return counted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.b1_telemetry")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--database-url", default=os.environ.get("SQUIDMESH_BENCH_DATABASE_URL", DEFAULT_SERVER)
    )
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    dbs = Databases(args.database_url)
    results: dict[str, list[float]] = {"off": [], "no SDK": [], "SDK": []}
    spans = 0
    try:
        for round_ in range(args.rounds):
            for variant in results:
                counted = None
                if variant == "SDK":
                    counted = _install_sdk()
                else:
                    _reset()
                options = {"telemetry": False} if variant == "off" else {}
                with dbs.fresh(f"b1t_{round_}_{variant.replace(' ', '')}") as url:
                    result = run_once(url, args.steps, **options)
                if counted is not None:
                    counted.tracer_provider.shutdown()  # flushes the batch processor
                    counted.reader.get_metrics_data()
                    counted.meter_provider.shutdown()
                    spans = counted.spans
                results[variant].append(result["steps_per_s"])
                print(
                    f"round {round_ + 1} {variant:>6}: {result['steps_per_s']:>8,.0f} steps/s "
                    f"({result['ms_per_step']:.3f} ms/step, client CPU "
                    f"{result['client_cpu_ms_per_step']:.3f} ms/step)",
                    flush=True,
                )
    finally:
        _reset()
        dbs.drop_all()
    best_off = max(results["off"])
    summary = {
        variant: {
            "best_steps_per_s": max(rates),
            "median_steps_per_s": median(rates),
            "best_pct_of_off": round(100 * max(rates) / best_off, 1),
            "runs": rates,
        }
        for variant, rates in results.items()
    }
    summary["SDK"]["spans_of_last_run"] = spans
    for variant, data in summary.items():
        print(
            f"{variant:>6}: best {data['best_steps_per_s']:,.0f} steps/s "
            f"({data['best_pct_of_off']:.1f}% of off), median {data['median_steps_per_s']:,.0f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"steps": args.steps, "variants": summary}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
