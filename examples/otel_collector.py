"""Sending squidmesh's traces and metrics to an OpenTelemetry collector (OTLP over HTTP).

    pip install -e ".[otel]" opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
    OTEL_SERVICE_NAME=orders SQUIDMESH_APP=examples.otel_collector:mesh squidmesh worker

squidmesh itself only uses the OpenTelemetry API: the host configures the SDK, once per
process, before work starts (here when the --app module is imported, so a `squidmesh
worker` running it exports too). docs/observability.md explains the spans and metrics.
"""

from __future__ import annotations

import os

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import squidmesh as sm
from examples.order_fulfilment import fulfil_order


def otlp_providers(endpoint: str = "http://127.0.0.1:4318") -> tuple[TracerProvider, MeterProvider]:
    """A tracer and a meter provider exporting to the collector at ``endpoint``."""
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "orders")})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
    )
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"), export_interval_millis=15_000
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    return tracer_provider, meter_provider


def install(endpoint: str = "http://127.0.0.1:4318") -> None:
    """Make them the process's providers: every Mesh of the process reports to them."""
    tracer_provider, meter_provider = otlp_providers(endpoint)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)


if os.environ.get("SQUIDMESH_APP", "").startswith("examples.otel_collector"):
    install(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"))
    mesh = sm.Mesh(
        os.environ.get("DATABASE_URL", "postgresql+psycopg://app@localhost/app"),
        workflows=[fulfil_order],
    )
