-- squidmesh schema version 5 (PostgreSQL): the trace a run's spans join.
-- trace_context holds the W3C trace context (traceparent, tracestate) of the span that
-- was current when the run was started, so workers in any process continue the run's
-- trace (docs/observability.md). It is written once, when the run is inserted: the
-- write function squidmesh_write_v2 lists the columns it updates and leaves it alone.
-- {schema} is replaced by the configured schema name (a plain lower-case identifier).
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.
ALTER TABLE {schema}.squidmesh_runs ADD COLUMN trace_context JSON;
