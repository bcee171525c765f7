-- squidmesh schema version 6 (PostgreSQL): the trace a run's spans join.
-- trace_context holds the W3C trace context (traceparent, tracestate) of the span that
-- was current when the run was started, so workers in any process continue the run's
-- trace (docs/observability.md). It is written once, when the run is inserted: a state
-- change writes only the fields it may alter (RUN_MUTABLE_FIELDS, storage/base.py).
-- {schema} is replaced by the configured schema name (a plain lower-case identifier).
-- Must equal squidmesh/storage/tables.py; tests/contract compares the two.
ALTER TABLE {schema}.squidmesh_runs ADD COLUMN trace_context JSON;
