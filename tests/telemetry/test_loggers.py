from __future__ import annotations

# Every logger the package uses is listed in telemetry.LOGGERS and documented in
# docs/observability.md, and every record of each carries a ``squidmesh`` dict.
import logging
import re
from pathlib import Path

from squidmesh.runtime.telemetry import LOGGERS

REPO = Path(__file__).resolve().parents[2]
GET_LOGGER = re.compile(r"""logging\.getLogger\(\s*["']([^"']+)["']\s*\)""")


def test_every_logger_of_the_package_is_listed_and_documented() -> None:
    used = set()
    for path in (REPO / "squidmesh").rglob("*.py"):
        used.update(GET_LOGGER.findall(path.read_text(encoding="utf-8")))
    assert used == set(LOGGERS)
    doc = (REPO / "docs" / "observability.md").read_text(encoding="utf-8")
    for name in LOGGERS:
        assert f"| `{name}` |" in doc, name


def test_every_record_of_a_squidmesh_logger_has_fields() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            logger.warning("plain")
            logger.warning("with fields", extra={"squidmesh": {"run_id": "r"}})
        finally:
            logger.removeHandler(handler)
    assert len(records) == 2 * len(LOGGERS)
    assert [r.squidmesh for r in records] == [{}, {"run_id": "r"}] * len(LOGGERS)  # type: ignore[attr-defined]


def test_the_otlp_recipe_builds_exporting_providers() -> None:
    # examples/otel_collector.py, quoted by docs/observability.md: its providers export
    # over OTLP/HTTP to the collector's endpoint (building them sends nothing).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from examples.otel_collector import otlp_providers

    tracer_provider, meter_provider = otlp_providers("http://127.0.0.1:9")
    try:
        processor = tracer_provider._active_span_processor._span_processors[0]
        exporter = processor.span_exporter  # type: ignore[attr-defined]
        assert isinstance(exporter, OTLPSpanExporter)
        assert exporter._endpoint == "http://127.0.0.1:9/v1/traces"
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown(timeout_millis=1000)
