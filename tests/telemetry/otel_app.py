from __future__ import annotations

# The --app of the telemetry process tests:
#
#     SQUIDMESH_TEST_URL=... SPANS_FILE=/tmp/spans.jsonl \
#         squidmesh --app tests.telemetry.otel_app:mesh worker --log-format json
#
# With SPANS_FILE set it configures an OpenTelemetry SDK whose exporter appends each
# finished span to that file as one JSON object per line, so the test process can check
# that the worker's spans joined the trace the test started.
import json
import os
import threading
from collections.abc import Sequence

import squidmesh as sm
from tests.telemetry.flows import order

SPANS_FILE = os.environ.get("SPANS_FILE")

if SPANS_FILE:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class FileExporter(SpanExporter):
        def __init__(self, path: str) -> None:
            self.path = path
            self.lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with self.lock, open(self.path, "a", encoding="utf-8") as out:
                for span in spans:
                    out.write(
                        json.dumps(
                            {
                                "name": span.name,
                                "trace_id": span.context.trace_id,
                                "span_id": span.context.span_id,
                                "parent_id": span.parent.span_id if span.parent else None,
                                "attributes": dict(span.attributes or {}),
                                "status": span.status.status_code.name,
                                "pid": os.getpid(),
                            }
                        )
                        + "\n"
                    )
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(SPANS_FILE)))
    trace.set_tracer_provider(provider)

mesh = sm.Mesh(os.environ["SQUIDMESH_TEST_URL"], workflows=[order])
