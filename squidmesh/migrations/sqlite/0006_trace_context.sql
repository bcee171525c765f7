-- squidmesh schema version 6 (SQLite): the trace a run's spans join.
-- trace_context holds the W3C trace context (traceparent, tracestate) of the span that
-- was current when the run was started, so workers in any process continue the run's
-- trace (docs/observability.md). It is written once, when the run is inserted.
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.
ALTER TABLE squidmesh_runs ADD COLUMN trace_context TEXT;
